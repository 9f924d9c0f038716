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


def _scores(result: dict[str, Any], split: str) -> list[float]:
    """0/1 greedy correctness per held-out problem of `split` at the arm's final point, in problem order."""
    return [float(p["correct"]) for p in final(result).get("problems", []) if p.get("split", "in") == split]


def paired_table(results: dict[str, Any], split: str = "in") -> list[dict[str, Any]]:
    """Every arm against the initial model and against every other arm at the final point, paired over the same
    problems and over the seeds both arms ran (per-problem correctness averaged over those seeds), with a 95 %
    paired-bootstrap interval; McNemar's exact test only when one seed is compared."""
    from .stats import paired_difference

    runs = list(results["runs"].values())
    names = list(dict.fromkeys(arm for run in runs for arm in run["arms"]))  # every arm of every piece
    scores = {(arm, i): _scores(run["arms"][arm], split) for i, run in enumerate(runs) for arm in run["arms"]}
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first, second = (b, a) if a == "none" else (a, b)  # "X - initial", never "initial - X"
            shared = [k for k in range(len(runs)) if scores.get((first, k)) and scores.get((second, k))]
            if not shared:
                continue
            mean = lambda arm: [sum(col) / len(col) for col in zip(*(scores[(arm, k)] for k in shared))]  # noqa: E731
            result = paired_difference(mean(first), mean(second))
            if len(shared) > 1:
                result["mcnemar_p"] = None
            rows.append({"a": first, "b": second, "seeds": len(shared), **result})
    return rows


def _code(results: dict[str, Any]) -> str:
    """The git revision(s) the results came from: every piece's, once each."""
    gits = [(p.get("provenance") or {}).get("git") or {} for p in results.get("pieces") or []] or \
        [(results.get("provenance") or {}).get("git") or {}]
    names = []
    for git in gits:
        name = f"{str(git.get('revision'))[:12]}{' (dirty)' if git.get('dirty') else ''}"
        if name not in names:
            names.append(name)
    pieces = len(results.get("pieces") or [])
    return f"git {', '.join(names)}" + (f" ({pieces} pieces)" if pieces > 1 else "")


def markdown(results: dict[str, Any], machine: str | None = None) -> str:
    from .stats import describe, mean_spread

    runs = results["runs"]
    steps = results["eval_steps"]
    prov = results.get("provenance") or {}
    git = prov.get("git") or {}
    lines = [
        "# Learning comparison",
        "",
        f"{results['train_problems']} training problems, {results['heldout_size']} held out (seeded split, never "
        f"trained on)" + (f" + {results['ood_size']} out-of-distribution (more operations than any training problem)"
                          if results.get("ood_size") else "")
        + f"; G = {results['settings']['num_generations']}, {results['settings']['max_steps']} steps, "
        f"lr {results['settings']['learning_rate']}, model `{results['settings']['model']}`, seeds "
        f"{', '.join(str(r['seed']) for r in runs.values())}. Wall time {results['wall_seconds'] / 60:.1f} min"
        + (f" on {machine}." if machine else "."),
        f"Code: {_code(results)}; configuration sha256 "
        f"{str(results.get('config_sha256'))[:12]} (the full configuration of every arm is in compare_results.json).",
    ]
    for key, run in runs.items():
        arms = run["arms"]
        lines += ["", f"## Seed {run['seed'] if run['seed'] is not None else results['settings']['seed']}", "",
                  "Held-out greedy accuracy (± s.e. over problems) at each evaluation step:", "",
                  "| arm | " + " | ".join(f"step {s}" for s in steps) + " | pass@1 (final) | OOD greedy (final) |",
                  "|---|" + "---|" * (len(steps) + 2)]
        for arm, result in arms.items():
            by_step = {r["step"]: r for r in result["curve"]}
            cells = [_fmt(by_step[s]["greedy_accuracy"], by_step[s]["greedy_accuracy_se"]) if s in by_step else ""
                     for s in steps]
            last = final(result)
            ood = last.get("ood") or {}
            lines.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(cells)
                         + f" | {_fmt(last.get('pass1'), last.get('pass1_se'))} | "
                         f"{_fmt(ood.get('greedy_accuracy'), ood.get('greedy_accuracy_se'))} |")
        lines += ["", "Training diagnostics (means over the run's logged steps; gold read only for these):", "",
                  "| arm | reward | reference acc. (label_accuracy) | reward acc. | reference parse failure | "
                  "ref ≠ majority | no-answer rate (final, held-out) | minutes |", "|---|---|---|---|---|---|---|---|"]
        for arm, result in arms.items():
            d = result.get("diagnostics", {})
            lines.append(f"| {ARM_LABELS.get(arm, arm)} | {_fmt(d.get('reward'))} | "
                         f"{_fmt(d.get('cat/label_accuracy'))} | {_fmt(d.get('cat/reward_accuracy'))} | "
                         f"{_fmt(d.get('cat/reference_parse_failure'))} | {_fmt(d.get('cat/reference_ne_majority'))} | "
                         f"{_fmt(final(result).get('no_answer_rate'))} | {result['seconds'] / 60:.1f} |")
        sft = arms.get("cat_sft", {}).get("diagnostics")
        if sft:
            lines += ["", f"CaT-SFT: {sft.get('sft_references')} training references on the RL arms' questions, "
                          f"{sft.get('sft_validation_references')} validation references; early stopping "
                          + ("chose an earlier checkpoint." if sft.get("sft_early_stopping_triggered") else
                             "**never triggered** (the last evaluation had the lowest validation loss).")]
    if len(runs) > 1:
        lines += ["", "## Over seeds", "", "Final held-out greedy accuracy per seed, mean ± sd (min–max):", "",
                  "| arm | per seed | mean ± sd (min–max) |", "|---|---|---|"]
        first = next(iter(runs.values()))["arms"]
        for arm in first:
            values = [final(run["arms"][arm])["greedy_accuracy"] for run in runs.values() if arm in run["arms"]]
            m = mean_spread(values)
            sd = "–" if m["sd"] is None else f"{m['sd']:.3f}"
            lines.append(f"| {ARM_LABELS.get(arm, arm)} | {', '.join(f'{v:.3f}' for v in values)} | "
                         f"{m['mean']:.3f} ± {sd} ({m['min']:.3f}–{m['max']:.3f}) |")
    for split, title in (("in", "held-out split"), ("ood", "out-of-distribution set")):
        table = paired_table(results, split)
        if not table:
            continue
        lines += ["", f"## Paired differences, {title} (final points)", "",
                  "Greedy accuracy difference over the same problems (per-problem correctness averaged over seeds), "
                  "95 % paired-bootstrap interval; McNemar's exact test for one seed. \"not distinguishable\": the "
                  "interval holds 0.", ""]
        lines += [f"- {describe(r, ARM_LABELS.get(r['a'], r['a']), ARM_LABELS.get(r['b'], r['b']))}" for r in table]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    run = next(iter(results["runs"].values()))  # the first seed (the report has every seed)
    for arm, result in run["arms"].items():
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
    columns = ["seed", "arm", "step", "greedy_accuracy", "greedy_accuracy_se", "pass1", "pass1_se", "no_answer_rate"]
    table = wandb.Table(columns=columns)
    for run_ in results["runs"].values():
        for arm, result in run_["arms"].items():
            for r in result["curve"]:
                table.add_data(run_["seed"], arm, r["step"], *(r.get(c) for c in columns[3:]))
    run.log({"compare/curves": table, "compare/accuracy": wandb.Image(paths["png"])})
    run.finish()
