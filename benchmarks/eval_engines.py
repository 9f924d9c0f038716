"""`cat-trl eval` and compare's held-out scoring on vLLM vs transformers: the same problems and settings; only the
engine differs.

    .venv-vllm/bin/python benchmarks/eval_engines.py --out benchmarks/results-eval-engines-cpu.json   # vLLM env

Each run is its own process (vLLM allows one engine per process), arms alternate (vllm, transformers, vllm, ...) so
that machine noise hits both, `--repeats` processes per arm. From every run's `eval_results.json`: the pool's
decoding time (`meta.pool_seconds`: G rollouts for every problem) and the methods' time (selection and synthesis
calls); the process's wall time too (it includes loading the model, and vLLM's engine start). Printed: the medians
per arm with their min-max spread and the transformers / vLLM ratios.

Held-out scoring (`--heldout N`, 0 to skip): one `cat-trl compare` point, i.e. `HeldOutEvaluator.evaluate` (greedy +
`heldout_k` samples per problem) on the first N held-out problems of `yaml/compare/quickstart-cpu.yaml` (in- and
out-of-distribution in the recipe's 2:1 ratio), by the initial policy in a transformers engine or a standalone vLLM
engine (`EngineSpec("vllm", model=...)`); each in its own process, alternating. Compare with `use_vllm: true,
vllm_mode: colocate` decodes with the same `vllm.LLM.generate` in TRL's colocated engine; that engine's weight sync
before a point is not in this figure. Both arms' greedy accuracies are stored: the engines should agree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(engine: str, out: str, problems: int, g: int, tokens: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "eval.log")
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "cat_trl.cli", "eval",
                               str(REPO / "yaml" / "eval" / "quickstart-cpu.yaml"), "--engine", engine,
                               "--dataset_max_samples", str(problems), "--num_generations", f"[{g}]",
                               "--max_new_tokens", str(tokens), "--anchor_max_new_tokens", str(tokens),
                               "--max_context", "2048", "--report_to", "none", "--progress", "false",
                               "--output_dir", out], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:  # the child's own output says why
        with open(log) as f:
            raise RuntimeError(f"cat-trl eval --engine {engine} exited {proc.returncode}; its log ({log}) ends:\n"
                               + f.read()[-4000:])
    with open(os.path.join(out, "eval_results.json")) as f:
        result = json.load(f)
    meta = result["meta"]
    return {"engine": engine, "engine_name": meta["engine"], "wall_seconds": wall,
            "pool_seconds": meta["pool_seconds"], "pool_generated_tokens": meta["pool_generated_tokens"],
            "methods_seconds": _methods_seconds(result)}


def heldout_child(engine: str, n: int, out: str) -> None:
    """One held-out point on `engine` (runs in its own process): writes seconds and accuracies to `out`."""
    import yaml

    from cat_trl.cli.compare import parse_args
    from cat_trl.comparison.heldout import HeldOutEvaluator
    from cat_trl.comparison.runner import Comparison
    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.engines.factory import EngineSpec, build_engine

    recipe = yaml.safe_load((REPO / "yaml" / "compare" / "quickstart-cpu.yaml").read_text())
    # data and held-out settings are all this needs; a training key unknown to this environment's transformers
    # (`activation_checkpointing` before 5.18, e.g. under vLLM's pin) is dropped
    recipe.pop("activation_checkpointing", None)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "recipe.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    compare_args, arm_args, _ = parse_args(["--config", path, "--output_dir", os.path.join(tmp, "out")])
    comparison = Comparison(compare_args, arm_args, os.path.join(tmp, "out"))
    comparison.prepare()
    inside = [r for r in comparison.heldout_rows if r["split"] == "in"]
    ood = [r for r in comparison.heldout_rows if r["split"] == "ood"]
    n_ood = n // 3 if ood else 0
    rows = inside[: n - n_ood] + ood[:n_ood]
    evaluator = HeldOutEvaluator(rows, comparison.matcher, comparison.extract, comparison.evaluator.settings)
    start = time.perf_counter()
    built = build_engine(EngineSpec(engine, model=resolve_model_path(recipe["model_name_or_path"]), dtype="float32"))
    load = time.perf_counter() - start
    result = evaluator.evaluate(built)
    with open(out, "w") as f:
        json.dump({"engine": engine, "engine_name": result["engine"], "load_seconds": load,
                   "point_seconds": result["seconds"], "problems": len(rows), "k": evaluator.settings.k,
                   "max_new_tokens": evaluator.settings.max_new_tokens,
                   "greedy_accuracy": result["greedy_accuracy"],
                   "ood_greedy_accuracy": (result.get("ood") or {}).get("greedy_accuracy")}, f)


def run_heldout(engine: str, n: int, out: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    log = out + ".log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, __file__, "--heldout-child", engine, "--heldout", str(n), "--child-out",
                               out], env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            raise RuntimeError(f"the held-out point on {engine} exited {proc.returncode}; its log ({log}) ends:\n"
                               + f.read()[-4000:])
    with open(out) as f:
        return {**json.load(f), "wall_seconds": time.perf_counter() - start}


def _methods_seconds(result: dict) -> float | None:
    """Seconds the methods' own engine calls took (the report's cost table), summed; None when not recorded."""
    total, found = 0.0, False
    for per_g in (result.get("cost") or {}).values():  # {method: {G: {..., "seconds_total": s}}}
        for entry in per_g.values():
            if isinstance(entry.get("seconds_total"), (int, float)):
                total += entry["seconds_total"]
                found = True
    return total if found else None


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--g", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=60, help="held-out problems per compare point (0: skip)")
    parser.add_argument("--skip-eval", action="store_true", help="held-out scoring only")
    parser.add_argument("--out", default=None)
    parser.add_argument("--heldout-child", choices=["vllm", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.heldout_child:
        heldout_child(cli.heldout_child, cli.heldout, cli.child_out)
        return

    from cat_trl.evaluation.provenance import provenance

    tmp = tempfile.mkdtemp()
    runs, heldout = [], []
    for rep in range(cli.repeats):
        for engine in ("vllm", "transformers") if rep % 2 == 0 else ("transformers", "vllm"):
            if not cli.skip_eval:
                runs.append({**run(engine, os.path.join(tmp, f"{engine}-{rep}"), cli.problems, cli.g, cli.tokens),
                             "repeat": rep})
                print(json.dumps(runs[-1]), flush=True)
            if cli.heldout:
                heldout.append({**run_heldout(engine, cli.heldout, os.path.join(tmp, f"heldout-{engine}-{rep}.json")),
                                "repeat": rep})
                print(json.dumps(heldout[-1]), flush=True)
    summary = {}
    for key in ("point_seconds", "load_seconds", "wall_seconds"):
        if not heldout:
            break
        arms = {e: _spread([r[key] for r in heldout if r["engine"] == e]) for e in ("vllm", "transformers")}
        summary[f"heldout_{key}"] = {**arms, "transformers_over_vllm":
                                     arms["transformers"]["median"] / arms["vllm"]["median"]}
        print(f"held-out {key}: vLLM {arms['vllm']['median']:.1f} s, transformers {arms['transformers']['median']:.1f}"
              f" s, ratio {summary[f'heldout_{key}']['transformers_over_vllm']:.2f}x (n = {cli.repeats} per arm)")
    for key in ("pool_seconds", "methods_seconds", "wall_seconds"):
        if not runs or any(r[key] is None for r in runs):
            continue
        arms = {e: _spread([r[key] for r in runs if r["engine"] == e]) for e in ("vllm", "transformers")}
        summary[key] = {**arms, "transformers_over_vllm": arms["transformers"]["median"] / arms["vllm"]["median"]}
        print(f"{key}: vLLM {arms['vllm']['median']:.1f} s ({arms['vllm']['min']:.1f}-{arms['vllm']['max']:.1f}), "
              f"transformers {arms['transformers']['median']:.1f} s ({arms['transformers']['min']:.1f}-"
              f"{arms['transformers']['max']:.1f}), ratio {summary[key]['transformers_over_vllm']:.2f}x "
              f"(n = {cli.repeats} per arm)")
    result = {"benchmark": "eval_engines", "summary": summary, "runs": runs, "heldout_runs": heldout,
              "settings": {"recipe": "yaml/eval/quickstart-cpu.yaml", "problems": cli.problems, "g": cli.g,
                           "max_new_tokens": cli.tokens, "repeats": cli.repeats, "dtype": "float32",
                           "heldout_recipe": "yaml/compare/quickstart-cpu.yaml", "heldout_problems": cli.heldout,
                           "skip_eval": cli.skip_eval},
              "provenance": provenance()}
    if cli.out:
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
