"""`cat-trl eval` on vLLM vs transformers: the same problems, pool, methods and settings; only `engine` differs.

    .venv-vllm/bin/python benchmarks/eval_engines.py --out benchmarks/results-eval-engines-cpu.json   # vLLM env

Each run is its own process (vLLM allows one engine per process), arms alternate (vllm, transformers, vllm, ...) so
that machine noise hits both, `--repeats` processes per arm. From every run's `eval_results.json`: the pool's
decoding time (`meta.pool_seconds`: G rollouts for every problem) and the methods' time (selection and synthesis
calls); the process's wall time too (it includes loading the model, and vLLM's engine start). Printed: the medians
per arm with their min-max spread and the transformers / vLLM ratios.
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
    subprocess.run([sys.executable, "-m", "cat_trl.cli", "eval", str(REPO / "yaml" / "eval" / "quickstart-cpu.yaml"),
                    "--engine", engine, "--dataset_max_samples", str(problems), "--num_generations", f"[{g}]",
                    "--max_new_tokens", str(tokens), "--anchor_max_new_tokens", str(tokens), "--max_context", "2048",
                    "--report_to", "none", "--progress", "false", "--output_dir", out],
                   check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    with open(os.path.join(out, "eval_results.json")) as f:
        result = json.load(f)
    meta = result["meta"]
    return {"engine": engine, "engine_name": meta["engine"], "wall_seconds": wall,
            "pool_seconds": meta["pool_seconds"], "pool_generated_tokens": meta["pool_generated_tokens"],
            "methods_seconds": _methods_seconds(result)}


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
    parser.add_argument("--out", default=None)
    cli = parser.parse_args()

    from cat_trl.evaluation.provenance import provenance

    tmp = tempfile.mkdtemp()
    runs = []
    for rep in range(cli.repeats):
        for engine in ("vllm", "transformers") if rep % 2 == 0 else ("transformers", "vllm"):
            runs.append({**run(engine, os.path.join(tmp, f"{engine}-{rep}"), cli.problems, cli.g, cli.tokens),
                         "repeat": rep})
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for key in ("pool_seconds", "methods_seconds", "wall_seconds"):
        if any(r[key] is None for r in runs):
            continue
        arms = {e: _spread([r[key] for r in runs if r["engine"] == e]) for e in ("vllm", "transformers")}
        summary[key] = {**arms, "transformers_over_vllm": arms["transformers"]["median"] / arms["vllm"]["median"]}
        print(f"{key}: vLLM {arms['vllm']['median']:.1f} s ({arms['vllm']['min']:.1f}-{arms['vllm']['max']:.1f}), "
              f"transformers {arms['transformers']['median']:.1f} s ({arms['transformers']['min']:.1f}-"
              f"{arms['transformers']['max']:.1f}), ratio {summary[key]['transformers_over_vllm']:.2f}x "
              f"(n = {cli.repeats} per arm)")
    result = {"benchmark": "eval_engines", "summary": summary, "runs": runs,
              "settings": {"recipe": "yaml/eval/quickstart-cpu.yaml", "problems": cli.problems, "g": cli.g,
                           "max_new_tokens": cli.tokens, "repeats": cli.repeats, "dtype": "float32"},
              "provenance": provenance()}
    if cli.out:
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
