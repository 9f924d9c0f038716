"""The README's speed figures, rendered from the stored benchmark JSON (and nothing else), so that a figure in the
README is always one a reader can find in `benchmarks/`:

    python scripts/speed_figures.py            # prints the table
    python scripts/speed_figures.py --write    # replaces the block between the README's speed-figures markers

`tests/test_docs.py` fails when the README's block differs from what this renders. Every row is one run of one
benchmark: a ratio of medians, each side's spread (interquartile range, or min-max where only that is stored) and the
sample count. A benchmark whose JSON is not in `benchmarks/` has no row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- speed-figures:begin -->", "<!-- speed-figures:end -->"


def _load(name: str) -> dict | None:
    path = REPO / "benchmarks" / name
    return json.loads(path.read_text()) if path.is_file() else None


def _iqr(s: dict) -> str:
    if "q1" in s:
        return f"{s['median']:.2f} s, IQR {s['q1']:.2f}–{s['q3']:.2f}"
    return f"{s['median']:.1f} s, range {s['min']:.1f}–{s['max']:.1f}"


def _link(name: str) -> str:
    return f"[`{name}`](benchmarks/{name})"


def _engine_row(what: str, figures: dict) -> str:
    """One transformers-vs-vLLM row of `results-eval-engines-cpu.json`."""
    return (f"| {what}: transformers / vLLM | **{figures['transformers_over_vllm']:.2f}×** | "
            f"vLLM {_iqr(figures['vllm'])}; transformers {_iqr(figures['transformers'])} | {figures['vllm']['n']} "
            f"processes per arm | {_link('results-eval-engines-cpu.json')} |")


def _eval_rows() -> list[str]:
    d = _load("results-eval-engines-cpu.json")
    if not d:
        return []
    rows, s, summary = [], d["settings"], d["summary"]
    if "pool_seconds" in summary:
        rows.append(_engine_row(f"`cat-trl eval`, decoding the pool (G = {s['g']}, {s['problems']} MATH-500 problems, "
                                f"{s['max_new_tokens']} tokens)", summary["pool_seconds"]))
    if summary.get("methods_seconds", {}).get("vllm"):
        rows.append(_engine_row("`cat-trl eval`, the methods' own calls on that pool (selection scoring, syntheses, "
                                "self-BoN)", summary["methods_seconds"]))
    if "heldout_point_seconds" in summary:
        rows.append(_engine_row(f"`cat-trl compare`, one held-out point ({s['heldout_problems']} problems, greedy + 1 "
                                "sample, 64 tokens)", summary["heldout_point_seconds"]))
    return rows


def _overlap_rows() -> list[str]:
    d = _load("results-overlap-cpu.json")
    if not d:
        return []
    rows = []
    for r in d["rows"]:
        rows.append(f"| server anchor answering after {r['latency']:g} s: overlapped / serial step "
                    f"(plain step without anchor {_iqr(d['plain'])}) | **{r['overlapped_over_serial']:.2f}×** "
                    f"(overlapped {r['overlapped_over_plain']:.2f}× plain, serial {r['serial_over_plain']:.2f}×) | "
                    f"overlapped {_iqr(r['overlapped'])}; serial {_iqr(r['serial'])} | {r['overlapped']['n']} steps "
                    f"per arm | {_link('results-overlap-cpu.json')} |")
    d = _load("results-overlap-vllm-cpu.json")
    if d:
        q = d["steps"]
        rows.append(f"| real vLLM server anchor on loopback, sharing the 2 cores: overlapped / serial step (plain step "
                    f"without anchor {_iqr(q['plain'])}) | **{d['overlapped_over_serial']:.2f}×** (overlapped "
                    f"{d['overlapped_over_plain']:.2f}× plain, serial {d['serial_over_plain']:.2f}×) | overlapped "
                    f"{_iqr(q['overlapped'])}; serial {_iqr(q['serial'])} | {q['overlapped']['n']} steps per arm | "
                    f"{_link('results-overlap-vllm-cpu.json')} |")
    return rows


def _split(parts: dict) -> str:
    names = {"rollout": "rollouts", "logprob": "log-probs", "reward": "reward", "backward": "backward",
             "policy_sync": "sync"}
    return ", ".join(f"{names[k]} {v['median']:.1f}" for k, v in parts.items() if v and v["median"] >= 0.05)


def _step_rows() -> list[str]:
    rows = []
    for name in ("results-vllm-cpu.json", "results-vllm-256-cpu.json", "results-step-transformers-cpu.json"):
        d = _load(name)
        if not d or "step_split_s" not in d:  # older format: no forced synthesis length, no split
            continue
        s = d["setting"]
        where = "vLLM colocate" if s.get("rollouts", "vllm") == "vllm" else "transformers"
        split = d["step_split_s"]
        rows.append(f"| CaT-RL / plain GRPO step, rollouts in {where} (G = {s['G']}, {s['prompts_per_step']} prompts, "
                    f"rollouts {s['completion_tokens']} / synthesis {s['synthesis_tokens']} tokens) | "
                    f"**{d['ratio']:.2f}×** | CaT {_iqr(d['cat_step_s'])}; plain {_iqr(d['plain_step_s'])}. Split (s), "
                    f"CaT: {_split(split['cat'])}; plain: {_split(split['plain'])} | {s['processes_per_arm']} processes "
                    f"× {s['steps_per_process'] - 1} steps per arm | {_link(name)} |")
    return rows


def render() -> str:
    rows = _eval_rows() + _overlap_rows() + _step_rows()
    head = ["| measured (CPU, 2 cores, embedded 135M model, float32) | ratio | spread | n | JSON |",
            "|---|---|---|---|---|"]
    return "\n".join([BEGIN, *head, *rows, END])


def readme_block(text: str) -> str:
    """The README's block between the markers, markers included."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main(argv: list[str]) -> int:
    if "--write" in argv:
        path = REPO / "README.md"
        text = path.read_text()
        path.write_text(text.replace(readme_block(text), render()))
        return 0
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
