"""`cat-trl compare CONFIG.yaml [--key value ...]`: does CaT-RL beat the alternatives at equal compute?

The YAML is a training recipe (every `cat-trl train` key) plus the `CompareArguments` keys (`arms`, `heldout_size`,
`heldout_every`, `heldout_k`, `sft_*`). Every arm is trained from the same recipe; only `cat_estimator` (and the arm's
`output_dir`) differ, and the `gold` arm swaps in the oracle reward. Writes `compare_results.json`,
`compare_report.md`, `compare_accuracy.png` and `heldout.jsonl` to `output_dir` (+ W&B with `report_to: wandb`).

    cat-trl compare yaml/compare/quickstart-cpu.yaml
    cat-trl compare yaml/compare/math500-qwen3-4b.yaml --arms "[none, cat, gold]"
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Sequence

from trl import ModelConfig

from ..comparison.runner import RL_ARMS, CompareArguments, Comparison
from ..config import REMOVED_SETTINGS, CaTGRPOConfig
from ..config.script_args import CaTScriptArguments
from .common import CliError, CliParser, split_config
from .train import ConfigError, read_recipe

logger = logging.getLogger("cat_trl")


def make_parser() -> CliParser:
    """`train`'s parser (the same `CliParser`) with the `CompareArguments` keys."""
    return CliParser((CompareArguments, CaTScriptArguments, CaTGRPOConfig, ModelConfig), "compare",
                     removed=REMOVED_SETTINGS, what="recipe")


def _parse(argv: list[str], recipe: dict):
    """The four dataclasses from the checked `recipe` and the command line `argv` (without `--config`); a fresh
    parser each time, since reading a recipe sets the parser's defaults."""
    try:
        return make_parser().parse(argv, config=recipe)
    except CliError as err:
        raise ConfigError(str(err)) from err


def parse_args(argv: Sequence[str]):
    """(CompareArguments, arm_args, root): `arm_args(arm, seed=None)` parses the recipe again for one arm (fresh config
    objects, TRL's checks run per arm), with that arm's estimator, output directory and (several seeds) seed."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        raise SystemExit(0)
    recipe = read_recipe(argv, make_parser())
    argv = split_config(argv)[1]
    compare_args, _, base, _ = _parse(argv, recipe)
    if base.max_steps is None or base.max_steps < 1:
        raise ConfigError("cat-trl compare needs max_steps >= 1 (every arm trains the same number of steps)")
    root = base.output_dir

    def arm_args(arm: str, seed: int | None = None):
        """One arm's arguments; with `seed` (one of several `seeds`) the run goes to `<root>/seed-<seed>/<arm>`."""
        out = os.path.join(root, arm) if seed is None else os.path.join(root, f"seed-{seed}", arm)
        extra = ["--output_dir", out] + ([] if seed is None else ["--seed", str(seed)])
        if arm in RL_ARMS:
            extra += ["--cat_estimator", RL_ARMS[arm]]
        _, script_args, args, model_args = _parse([*argv, *extra], recipe)
        return script_args, args, model_args

    return compare_args, arm_args, root


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return f"{gpu or cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    from ..comparison.report import log_wandb, write_reports

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", argv[0], *argv[1:]]
    try:
        compare_args, arm_args, root = parse_args(argv)
        comparison = Comparison(compare_args, arm_args, root)
        comparison.prepare()  # data, held-out split, settings: before any model loads
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"cat-trl compare: configuration error: {err}", file=sys.stderr)
        return 2
    results = comparison.run()
    machine = machine_description()
    paths = write_reports(results, root, machine)
    _, base, _ = arm_args("none")
    if "wandb" in (base.report_to or []):
        log_wandb(results, paths, os.environ.get("WANDB_PROJECT", "cat-trl"), base.run_name)
    print(open(paths["markdown"]).read())
    print(f"wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
