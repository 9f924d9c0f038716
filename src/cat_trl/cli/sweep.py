"""Sweeps over G (the paper's compute knob) with prompts per step held fixed.

    cat-trl sweep yaml/sweeps/math500-qwen3-4b-G.yaml            # creates the W&B sweep (online), prints the agent
    cat-trl sweep yaml/sweeps/quickstart-G.yaml --local           # the same grid, sequentially, offline, + report

A sweep file is a W&B sweep definition (`method: grid`, `parameters`, a tokenised `command` ending in `${args}`) plus
one cat-trl key, `prompts_per_step`. W&B cannot tie one parameter to another, so batch sizes are not swept: every run
receives `--prompts_per_step P` and `CaTGRPOConfig` derives `per_device_train_batch_size` from P, G, the number of
processes and `steps_per_generation` (`derive_batch`). `cat-trl sweep` checks that derivation for **every** grid
point before anything launches, so a G that does not divide the batch fails in a second, not mid-sweep.
Parameters reach every rank as CLI arguments (`${args}` -> `--key=value`), never through `wandb.config` alone.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import derive_batch

CAT_KEYS = ("prompts_per_step",)
MACROS = ("${args}", "${interpreter}", "${env}", "${program}")


class SweepError(ValueError):
    """A sweep definition or grid point that cannot run."""


def _grid(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    names, choices = [], []
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            raise SweepError(f"parameter {name!r}: expected a mapping with `values` or `value`")
        if "values" in spec:
            values = spec["values"]
        elif "value" in spec:
            values = [spec["value"]]
        else:
            raise SweepError(f"parameter {name!r}: grid sweeps need `values` (or a fixed `value`)")
        if not isinstance(values, list) or not values:
            raise SweepError(f"parameter {name!r}: `values` must be a non-empty list")
        names.append(name)
        choices.append(values)
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def _num_processes(command: list[str]) -> int:
    """From `--num_processes N` in the command, else the accelerate config file's `num_processes`, else 1."""
    for i, tok in enumerate(command):
        if tok == "--num_processes" and i + 1 < len(command):
            return int(command[i + 1])
        if tok.startswith("--num_processes="):
            return int(tok.split("=", 1)[1])
    for i, tok in enumerate(command):
        if tok == "--config_file" and i + 1 < len(command) and os.path.exists(command[i + 1]):
            from .recipe import RecipeError, load_mapping

            try:
                config = load_mapping(command[i + 1], "the sweep command's accelerate config")
            except RecipeError as err:
                raise SweepError(str(err)) from None
            return int(config.get("num_processes", 1))
    return 1


def _trains(command: list[str]) -> bool:
    """Whether the sweep command runs `cat-trl train` (`-m cat_trl.cli.train` or `cat-trl train`)."""
    return "cat_trl.cli.train" in command or any(
        a.endswith("cat-trl") and b == "train" for a, b in zip(command, command[1:]))


def _recipe(command: list[str], parser=None) -> dict[str, Any]:
    """The recipe of the sweep command's `--config PATH`, read like every recipe (`recipe.load_mapping`). When the
    command runs `cat-trl train`, `parser` is train's own (`cli.train.make_parser()`): the recipe's keys and value
    types are checked by it (`CliParser.check_config`), so a bad recipe fails here, before any run launches."""
    for i, tok in enumerate(command):
        if tok == "--config" and i + 1 < len(command):
            path = command[i + 1]
            if not os.path.exists(path):
                raise SweepError(f"the sweep command's recipe {path} does not exist")
            from .common import CliError
            from .recipe import RecipeError, load_mapping

            try:
                recipe = load_mapping(path, "the sweep command's recipe")
                if parser is not None:
                    checked = parser.check_config({k: v for k, v in recipe.items() if k != "env"},
                                                  f"the sweep command's recipe {path}: ")
                    recipe = {**recipe, **checked}
            except (RecipeError, CliError) as err:
                raise SweepError(str(err)) from None
            return recipe
    raise SweepError("the sweep command must pass a recipe with `--config PATH`")


def _train_parser():
    from .train import make_parser

    return make_parser()


def load_sweep(path: str) -> dict[str, Any]:
    """Reads and checks a sweep file, returning it with its planned grid (`_plan`): one entry per run."""
    from .recipe import RecipeError, load_mapping

    try:
        sweep = load_mapping(path, "sweep file")
    except RecipeError as err:
        raise SweepError(str(err)) from None
    if sweep.get("method") != "grid":
        raise SweepError(f"{path}: method must be `grid` (G is a discrete compute knob; grid runs every point)")
    command = sweep.get("command")
    if not isinstance(command, list) or not all(isinstance(t, str) for t in command):
        raise SweepError(f"{path}: `command` must be a tokenised list, e.g. [accelerate, launch, ..., ${{args}}]")
    if "${args}" not in command:
        raise SweepError(f"{path}: `command` must contain ${{args}} so every rank receives the parameters as CLI args")
    if "num_generations" not in (sweep.get("parameters") or {}):
        raise SweepError(f"{path}: a G sweep needs `num_generations` among its parameters")
    prompts = sweep.get("prompts_per_step")
    if not isinstance(prompts, int) or prompts < 1:
        raise SweepError(f"{path}: `prompts_per_step` (a positive int, fixed across G) is required")
    parser = _train_parser() if _trains(command) else None
    recipe = _recipe(command, parser)
    try:
        processes = _num_processes(command)
    except SweepError:
        raise
    except (TypeError, ValueError, AttributeError) as err:
        raise SweepError(f"{path}: num_processes must be an integer ({err})") from None
    plan = []
    for point in _grid(sweep["parameters"]):
        try:
            spg = int(point.get("steps_per_generation", recipe.get("steps_per_generation")
                                or recipe.get("gradient_accumulation_steps", 1)))
        except (TypeError, ValueError) as err:
            raise SweepError(f"{path}: grid point {point}: steps_per_generation must be an integer ({err})") from None
        g = point["num_generations"]
        if isinstance(g, bool) or not isinstance(g, int) and not (isinstance(g, str) and g.strip().isdigit()):
            raise SweepError(f"{path}: grid point {point}: num_generations must be an integer, got {g!r}")
        try:  # the derivation every rank's CaTGRPOConfig makes (`prompts_per_step`)
            batch = derive_batch(int(g), prompts, processes, spg)
        except ValueError as err:
            raise SweepError(f"{path}: grid point {point}: {err}") from None
        if parser is not None:  # each run gets the point as `--key=value`: its keys and values must suit train
            from .common import CliError

            try:
                parser.check_config(point, f"{path}: grid point {point}: ")
            except CliError as err:
                raise SweepError(str(err)) from None
        plan.append({"parameters": point, "per_device_train_batch_size": batch, "num_processes": processes})
    sweep["_plan"] = plan
    return sweep


def wandb_definition(sweep: dict[str, Any]) -> dict[str, Any]:
    """The W&B sweep definition: cat-trl keys folded into the command (every run gets --prompts_per_step)."""
    definition = {k: v for k, v in sweep.items() if k not in CAT_KEYS and not k.startswith("_")}
    command = list(sweep["command"])
    at = command.index("${args}")
    command[at:at] = [f"--prompts_per_step={sweep['prompts_per_step']}"]
    definition["command"] = command
    return definition


def run_args(point: dict[str, Any]) -> list[str]:
    """W&B's `${args}` expansion: `--key=value` per parameter."""
    return [f"--{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in point.items()]


def local_commands(sweep: dict[str, Any], output_root: str, extra: Sequence[str] = ()) -> list[list[str]]:
    commands = []
    for i, entry in enumerate(sweep["_plan"]):
        point = entry["parameters"]
        tag = "_".join(f"{k}-{v}" for k, v in point.items())
        out = os.path.join(output_root, f"{i:02d}_{tag}")
        cmd = []
        for tok in wandb_definition(sweep)["command"]:
            if tok == "${args}":
                cmd += run_args(point) + ["--output_dir", out, "--run_name", tag, *extra]
            elif tok == "${interpreter}":
                cmd.append(sys.executable)
            elif tok in ("${env}", "${program}"):
                continue
            else:
                cmd.append(tok)
        commands.append(cmd)
    return commands


def _final(history: list[dict], key: str) -> float | None:
    values = [h[key] for h in history if isinstance(h.get(key), (int, float))]
    return values[-1] if values else None


def report(results: list[dict[str, Any]], output_root: str, sweep: dict | None = None, extra=()) -> str:
    """Comparison table (Markdown + JSON) and a PNG of final reward, label accuracy and step time vs G."""
    lines = ["| G | final reward | final label accuracy | mean step time (s) | steps | run |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in results:
        lines.append(f"| {r['G']} | {fmt(r['reward'])} | {fmt(r['label_accuracy'])} | {fmt(r['step_time'])} | "
                     f"{r['steps']} | {r['output_dir']} |")
    table = "\n".join(lines)
    Path(output_root, "sweep_report.md").write_text(table + "\n")
    from ..evaluation.provenance import provenance

    # every point's own full configuration is its run's W&B config / args; here: the sweep and the shared overrides
    Path(output_root, "sweep_results.json").write_text(json.dumps(
        {"points": results, "sweep": {k: v for k, v in (sweep or {}).items() if not k.startswith("_")},
         "extra_args": list(extra), "provenance": provenance()}, indent=2, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    gs = [r["G"] for r in results]
    for ax, key, label in zip(axes, ("reward", "label_accuracy", "step_time"),
                              ("final reward", "label accuracy (diagnostic)", "step time (s)")):
        ax.plot(gs, [float("nan") if r[key] is None else r[key] for r in results], marker="o")
        ax.set_xlabel("G")
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(Path(output_root, "sweep_vs_G.png"), dpi=100)
    plt.close(fig)
    return table


def run_local(sweep: dict[str, Any], output_root: str, extra: Sequence[str] = (), group: str | None = None) -> str:
    os.makedirs(output_root, exist_ok=True)
    group = group or f"{sweep.get('name', 'sweep')}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_RUN_GROUP": group}
    results = []
    for entry, cmd in zip(sweep["_plan"], local_commands(sweep, output_root, extra)):
        print("$ " + shlex.join(cmd), flush=True)
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise SweepError(f"run {entry['parameters']} failed with exit code {proc.returncode}")
        out = cmd[cmd.index("--output_dir") + 1]
        history = json.loads(Path(out, "trainer_state.json").read_text())["log_history"]
        times = [h["step_time"] for h in history if isinstance(h.get("step_time"), (int, float))]
        results.append({
            "G": entry["parameters"]["num_generations"],
            "parameters": entry["parameters"],
            "reward": _final(history, "reward"),
            "label_accuracy": _final(history, "cat/label_accuracy"),
            "step_time": sum(times) / len(times) if times else None,
            "steps": max((h.get("step", 0) for h in history), default=0),
            "output_dir": out,
        })
    results.sort(key=lambda r: r["G"])
    table = report(results, output_root, sweep, extra)
    print(table)
    print(f"wrote {output_root}/sweep_report.md, sweep_results.json, sweep_vs_G.png (W&B group {group!r})")
    return table


@dataclass
class SweepArguments:
    """`cat-trl sweep SWEEP.yaml` settings (arguments after `--` are passed to every run, e.g. -- --max_steps 5)."""

    local: bool = field(default=False, metadata={"help": "Run the grid here, sequentially, W&B offline."})
    dry_run: bool = field(default=False, metadata={"help": "Check the grid and print the commands only."})
    project: str = field(default_factory=lambda: os.environ.get("WANDB_PROJECT", "cat-trl"),
                         metadata={"help": "W&B project of the sweep (default: WANDB_PROJECT, else cat-trl)."})
    entity: str | None = field(default_factory=lambda: os.environ.get("WANDB_ENTITY"),
                               metadata={"help": "W&B entity (default: WANDB_ENTITY)."})
    output_root: str = field(default="outputs/sweeps", metadata={"help": "Where --local runs write."})


_VALUE_FLAGS = {"--project", "--entity", "--output_root", "--output-root", "--config"}


def make_parser():
    """The parser every command uses (`CliParser`), over `SweepArguments`."""
    from .common import CliParser

    return CliParser([SweepArguments], "sweep")


def main(argv: Sequence[str] | None = None) -> int:
    from .common import CliError

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    head, extra = argv[:cut], argv[cut + 1 :]
    if not head or "-h" in head or "--help" in head:
        make_parser().print_settings(__doc__)
        return 0 if head else 2
    # the sweep file: the first argument that is not a flag nor a flag's value
    at = next((i for i, a in enumerate(head) if not a.startswith("-") and (i == 0 or head[i - 1] not in _VALUE_FLAGS)),
              None)
    try:
        if at is None:
            raise CliError("missing the sweep file: cat-trl sweep SWEEP.yaml [--local] [--dry_run] [-- run args]")
        (args,) = make_parser().parse(head[:at] + head[at + 1 :])
    except CliError as err:
        print(f"cat-trl sweep: {err}", file=sys.stderr)
        return 2
    sweep_path = head[at]
    try:
        sweep = load_sweep(sweep_path)
    except (SweepError, OSError, yaml.YAMLError) as err:
        print(f"cat-trl sweep: {err}", file=sys.stderr)
        return 2
    for entry in sweep["_plan"]:
        print(f"  {entry['parameters']} -> per_device_train_batch_size={entry['per_device_train_batch_size']} "
              f"on {entry['num_processes']} process(es)")
    root = os.path.join(args.output_root, sweep.get("name", Path(sweep_path).stem))
    if args.dry_run:
        for cmd in local_commands(sweep, root, extra):
            print("$ " + shlex.join(cmd))
        return 0
    if args.local:
        try:
            run_local(sweep, root, extra)
        except SweepError as err:
            print(f"cat-trl sweep: {err}", file=sys.stderr)
            return 1
        return 0
    import wandb

    sweep_id = wandb.sweep(wandb_definition(sweep), project=args.project, entity=args.entity)
    print(f"created sweep {sweep_id}; start agents with: wandb agent {args.entity + '/' if args.entity else ''}"
          f"{args.project}/{sweep_id}")
    return 0
