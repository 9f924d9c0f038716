"""Measure an answer-extraction change on texts already generated: no generation, no model, seconds.

`cat-trl eval` stores every rollout, selection and synthesis it produced (eval_results.json, `questions`). This
re-extracts the final answers of those same texts with the extractor of an earlier git revision ("before") and with
the working tree's ("after"), and prints, per method and G, the no-answer rate and the accuracy under each. The
texts are identical on both sides, so every difference is the extractor's.

    python scripts/rescore_extraction.py results/eval-heldout-words-cpu/eval_results.json --before 395228f

Scores with the run's own extraction mode and `string` matching against the stored gold answers (eval only; gold
answers never reach a training reward). Majority is re-voted over the re-extracted rollouts; selection methods keep
the rollout they picked (the pick never reads the extracted answer); Single is the mean over the pool's rollouts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import types
from pathlib import Path

from cat_trl.answers import AnswerMatcher, get_extractor, majority_answer

EXTRACT_PATH = "src/cat_trl/answers/extract.py"


def extractor_at(rev: str, mode: str):
    """The `mode` extractor of an extract.py file, or of extract.py as it was at git revision `rev` (the module is
    self-contained: `re` and typing only)."""
    if Path(rev).is_file():
        source = Path(rev).read_text()
    else:
        source = subprocess.run(["git", "show", f"{rev}:{EXTRACT_PATH}"], check=True, capture_output=True,
                                text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    module = types.ModuleType(f"extract_at_{rev}")
    exec(compile(source, f"{rev}:{EXTRACT_PATH}", "exec"), module.__dict__)
    return module.get_extractor(mode)


def rescore(results: dict, extract, matcher: AnswerMatcher) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(method, G) -> (accuracy, no-answer rate, questions) with `extract` applied to the stored texts."""
    def correct(answer, gold) -> float:
        return 1.0 if answer is not None and matcher.match(answer, str(gold)) else 0.0

    out: dict[tuple[str, int], list[tuple[float, bool]]] = {}
    for q in results["questions"]:
        answers = [extract(t) for t in q["rollouts"]]
        for g in results["meta"]["num_generations"]:
            if "single" in results["meta"]["methods"]:
                score = sum(correct(a, q["gold"]) for a in answers) / len(answers)
                out.setdefault(("single", g), []).append((score, answers[0] is None))
            for method, by_g in q["methods"].items():
                record = by_g.get(str(g))
                if method == "single" or record is None:
                    continue
                if method == "majority":
                    answer = majority_answer(answers[:g], matcher)[0]
                elif record.get("reference") is not None:  # synthesis: the anchor's text
                    answer = extract(record["reference"])
                else:  # a selection: the rollout it picked
                    answer = answers[record["choice"]] if record.get("choice") is not None else None
                out.setdefault((method, g), []).append((correct(answer, q["gold"]), answer is None))
    return {k: (sum(s for s, _ in v) / len(v), sum(n for _, n in v) / len(v), len(v)) for k, v in out.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="an eval_results.json written by `cat-trl eval`")
    parser.add_argument("--before", required=True, help="git revision (or extract.py file) whose extractor is 'before'")
    parser.add_argument("--after-mode", help="extraction mode for 'after' (default: the run's own), e.g. "
                        "boxed_or_final_numeric to measure the numeric-answer rule on the same texts")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)

    results = json.loads(args.results.read_text())
    config = results["meta"]["config"]
    mode = config["answer_extraction"]
    if config["match"] != "string" or not results["meta"]["verifiable"]:
        raise SystemExit("rescoring needs a verifiable run scored by `string` answer match")
    matcher = AnswerMatcher("string")
    before = rescore(results, extractor_at(args.before, mode), matcher)
    after_mode = args.after_mode or mode
    after = rescore(results, get_extractor(after_mode), matcher)
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", EXTRACT_PATH]).returncode != 0
    lines = [
        f"Extraction `{mode}` at {args.before} (before) vs `{after_mode}` at {head or 'this checkout'}"
        f"{' + uncommitted changes' if dirty else ''} (after), on the same stored texts of "
        f"{args.results} ({len(results['questions'])} questions).",
        "",
        "| method | G | no answer before | no answer after | accuracy before | accuracy after |",
        "|---|---|---|---|---|---|",
    ]
    for key in sorted(after, key=lambda k: (results["meta"]["methods"].index(k[0]), k[1])):
        (acc_b, none_b, _), (acc_a, none_a, _) = before[key], after[key]
        lines.append(f"| {key[0]} | {key[1]} | {none_b:.3f} | {none_a:.3f} | {acc_b:.3f} | {acc_a:.3f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
