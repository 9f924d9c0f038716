"""`compare_results.json`, `compare_report.md` and `compare_accuracy.png` from a comparison's results (and W&B)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

ARM_LABELS = {"none": "initial model", "cat": "CaT-RL (synthesis)", "majority": "majority vote (TTRL)",
              "self_bon": "self-best-of-N", "min_ppl": "min perplexity", "mutual_predictability": "mutual predictability",
              "gold": "GRPO on gold labels (oracle)", "cat_sft": "CaT-SFT"}


def _fmt(value: float | None, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" if se is None else f"{value:.3f} ± {se:.3f}"


def final(result: dict[str, Any]) -> dict[str, Any]:
    return max(result["curve"], key=lambda r: r["step"])


def markdown(results: dict[str, Any], machine: str | None = None) -> str:
    arms = results["arms"]
    steps = results["eval_steps"]
    base = final(arms["none"])["greedy_accuracy"] if "none" in arms else None
    lines = [
        "# Learning comparison",
        "",
        f"{results['train_problems']} training problems, {results['heldout_size']} held out (never trained on); "
        f"G = {results['settings']['num_generations']}, {results['settings']['max_steps']} steps, "
        f"lr {results['settings']['learning_rate']}, model `{results['settings']['model']}`. "
        f"Wall time {results['wall_seconds'] / 60:.1f} min" + (f" on {machine}." if machine else "."),
        "",
        "Held-out greedy accuracy (± standard error over problems) at each evaluation step:",
        "",
        "| arm | " + " | ".join(f"step {s}" for s in steps) + " | pass@1 (final) | Δ greedy vs initial |",
        "|---|" + "---|" * (len(steps) + 2),
    ]
    for arm, result in arms.items():
        by_step = {r["step"]: r for r in result["curve"]}
        cells = [_fmt(by_step[s]["greedy_accuracy"], by_step[s]["greedy_accuracy_se"]) if s in by_step else ""
                 for s in steps]
        last = final(result)
        delta = "" if base is None or arm == "none" else f"{last['greedy_accuracy'] - base:+.3f}"
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells)
                     + f" | {_fmt(last.get('pass1'), last.get('pass1_se'))} | {delta} |")
    lines += ["", "Training diagnostics (means over the run's logged steps; gold read only for these):", "",
              "| arm | reward | reference acc. (label_accuracy) | reward acc. | reference parse failure | "
              "ref ≠ majority | no-answer rate (final, held-out) | minutes |", "|---|---|---|---|---|---|---|---|"]
    for arm, result in arms.items():
        d = result.get("diagnostics", {})
        lines.append(f"| {ARM_LABELS.get(arm, arm)} | {_fmt(d.get('reward'))} | {_fmt(d.get('cat/label_accuracy'))} | "
                     f"{_fmt(d.get('cat/reward_accuracy'))} | {_fmt(d.get('cat/reference_parse_failure'))} | "
                     f"{_fmt(d.get('cat/reference_ne_majority'))} | {_fmt(final(result).get('no_answer_rate'))} | "
                     f"{result['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, result in results["arms"].items():
        curve = sorted(result["curve"], key=lambda r: r["step"])
        xs = [r["step"] for r in curve]
        ys = [r["greedy_accuracy"] for r in curve]
        es = [r["greedy_accuracy_se"] for r in curve]
        style = {"linestyle": "--"} if arm in ("none", "gold") else {}
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=ARM_LABELS.get(arm, arm), **style)
    ax.set_xlabel("training step (CaT-SFT: after fine-tuning)")
    ax.set_ylabel("held-out greedy accuracy (± s.e.)")
    ax.set_title(f"{results['settings']['model']}: {results['heldout_size']} held-out problems")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: dict[str, Any], output_dir: str, machine: str | None = None) -> dict[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "compare_results.json"),
             "markdown": os.path.join(output_dir, "compare_report.md"),
             "png": os.path.join(output_dir, "compare_accuracy.png")}
    with open(paths["json"], "w") as f:
        json.dump({**results, "machine": machine}, f, indent=2, default=str)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(results, machine))
    plot(results, paths["png"])
    return paths


def log_wandb(results: dict[str, Any], paths: dict[str, str], project: str, run_name: str | None) -> None:
    import wandb

    run = wandb.init(project=project, name=run_name or "cat-compare", config=results["settings"], reinit=True)
    columns = ["arm", "step", "greedy_accuracy", "greedy_accuracy_se", "pass1", "pass1_se", "no_answer_rate"]
    table = wandb.Table(columns=columns)
    for arm, result in results["arms"].items():
        for r in result["curve"]:
            table.add_data(arm, r["step"], *(r.get(c) for c in columns[2:]))
    run.log({"compare/curves": table, "compare/accuracy": wandb.Image(paths["png"])})
    run.finish()
