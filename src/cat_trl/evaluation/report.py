"""Writes a `cat-trl eval` result as JSON (every number + per-question records), Markdown and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .testtime import dumps

LABELS = {
    "single": "Single",
    "majority": "Majority",
    "self_bon": "Self-BoN",
    "min_ppl": "min-PPL",
    "mutual_predictability": "Mutual predictability",
    "synthesis": "Synthesis (CaT)",
    "synthesis_with_question": "Synthesis + question",
}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    acc, cost, meta = result["accuracy"], result["cost"], result["meta"]
    gs = [str(g) for g in meta["num_generations"]]
    lines = [
        f"# cat-trl eval: {meta['model']} on {meta['dataset']}",
        "",
        f"{meta['n_questions']} questions, G in {meta['num_generations']}, one pool of {max(meta['num_generations'])} "
        f"rollouts per question shared by every method; scored by {meta['scorer']}.",
        "",
        "## Accuracy (mean ± standard error over questions)",
        "",
        "| method | " + " | ".join(f"G={g}" for g in gs) + " |",
        "|---|" + "---|" * len(gs),
    ]
    for method in acc:
        cells = []
        for g in gs:
            a = acc[method].get(g)
            cells.append("–" if a is None else f"{_fmt(a['accuracy'])} ± {_fmt(a['se'])}")
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    fallbacks = {m: max(v["fallback_rate"] for v in acc[m].values()) for m in acc}
    fallbacks = {m: f for m, f in fallbacks.items() if f > 0}
    if fallbacks:
        lines += ["", "Selections that could not be made (unparseable pick; rollout 1 used instead), worst rate over "
                  "G: " + ", ".join(f"{LABELS.get(m, m)} {f:.1%}" for m, f in fallbacks.items()) + "."]
    if meta["verifiable"]:
        missing = {m: max(v["no_answer_rate"] for v in acc[m].values()) for m in acc}
        if any(missing.values()):
            lines += ["", "No final answer could be extracted (scored wrong), worst rate over G: "
                      + ", ".join(f"{LABELS.get(m, m)} {f:.1%}" for m, f in missing.items()) + "."]
    if result.get("analyses"):
        lines += ["", "## Synthesis vs selection (paper Sec. 4.5)", "",
                  "| G | pass@G | ≠ majority | synth. acc. there | majority acc. there | ≠ Self-BoN | synth. acc. there "
                  "| Self-BoN acc. there | synth. right, all rollouts wrong |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in gs:
            a = result["analyses"].get(g, {})
            maj, bon = a.get("synthesis_vs_majority", {}), a.get("synthesis_vs_self_bon", {})
            rescued = a.get("synthesis_correct_all_rollouts_wrong", {})
            lines.append(
                f"| {g} | {_fmt(a.get('pass_at_g'))} | {_fmt(maj.get('disagree_share'))} "
                f"| {_fmt(maj.get('synthesis_accuracy_when_disagree'))} | {_fmt(maj.get('other_accuracy_when_disagree'))} "
                f"| {_fmt(bon.get('disagree_share'))} | {_fmt(bon.get('synthesis_accuracy_when_disagree'))} "
                f"| {_fmt(bon.get('other_accuracy_when_disagree'))} | {_fmt(rescued.get('share'))} |"
            )
    g_max = gs[-1]
    lines += ["", f"## Cost per question at G={g_max}", "",
              "| method | generations | generated tokens | × one rollout | prefill tokens (extra) | scored tokens | "
              "seconds (all questions) |",
              "|---|---|---|---|---|---|---|"]
    for method in cost:
        c = cost[method].get(g_max)
        if c is None:
            continue
        lines.append(
            f"| {LABELS.get(method, method)} | {_fmt(c['generations'], 1)} | {_fmt(c['generated_tokens'], 1)} "
            f"| {_fmt(c['generated_tokens_vs_one_rollout'], 2)} | {_fmt(c['extra_prompt_tokens'], 1)} "
            f"| {_fmt(c['scored_tokens'], 1)} | {_fmt(c['seconds_total'], 1)} |"
        )
    lines += ["", f"Settings: sampling {meta['sampling']}; anchor {meta['anchor_sampling']}; "
              f"seed {meta['seed']}; device {meta['device']}; pool sampled in {_fmt(meta['pool_seconds'], 1)} s.", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["accuracy"]
    gs = result["meta"]["num_generations"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, by_g in acc.items():
        xs = [g for g in gs if str(g) in by_g]
        ys = [by_g[str(g)]["accuracy"] for g in xs]
        es = [by_g[str(g)]["se"] for g in xs]
        style = {"linestyle": "--"} if method == "single" else {"marker": "o"}
        if method.startswith("synthesis"):
            style["linewidth"] = 2.2
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=LABELS.get(method, method), **style)
    values = [v["accuracy"] for by_g in acc.values() for v in by_g.values() if v["accuracy"] == v["accuracy"]]
    if values:  # a range around the data (small differences stay visible), inside [0, 1]
        lo, hi = max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05)
        ax.set_ylim(lo, max(hi, lo + 0.1))
    ax.set_xscale("log", base=2)
    ax.set_xticks(gs, [str(g) for g in gs])
    ax.set_xlabel("G (rollouts per question)")
    ax.set_ylabel("accuracy" if result.get("analyses") is not None and result["meta"]["verifiable"] else "score")
    ax.set_title(f"{result['meta']['model']} on {result['meta']['dataset']} (n={result['meta']['n_questions']})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(result: dict[str, Any], output_dir: str | Path) -> dict[str, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval_results.json", "markdown": out / "eval_report.md", "png": out / "eval_accuracy.png"}
    from .provenance import provenance

    result.setdefault("provenance", provenance())  # beside result["config"]: the full settings
    paths["json"].write_text(dumps(result))
    paths["markdown"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths
