"""Per-step CaT diagnostics.

Label-free metrics (always): reference parse failures, truncation, how often the reference disagrees with the
rollouts' majority. Gold-based metrics (only when the dataset has a gold column, and only here -- never on the
reward path): TTRL's label_accuracy / reward_accuracy / majority_ratio / ground_truth_ratio / pass@G, plus the
paper's two "synthesis beats selection" signals: the reference is right where it disagrees with the majority, and
right where every rollout is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..answers import AnswerMatcher, extract_boxed, majority_answer
from .base import Group, Reference

NAN = float("nan")


@dataclass
class GroupDiagnostics:
    answers: list[str | None]
    majority: str | None
    majority_size: int
    reference_answer: str | None
    truncated: int
    reference_ne_majority: bool | None  # None when either side has no answer
    # gold-based (None without gold)
    gold: str | None = None
    reference_correct: bool | None = None
    rollouts_correct: list[bool] | None = None
    majority_correct: bool | None = None
    reward_agrees_with_gold: list[bool] | None = None


def analyse_group(
    group: Group,
    reference: Reference,
    matcher: AnswerMatcher,
    gold: str | None,
    extract: Callable[[str], str | None] = extract_boxed,
) -> GroupDiagnostics:
    answers = [extract(c) for c in group.completions]
    majority, size, _ = majority_answer(answers, matcher)
    ref = reference.answer
    d = GroupDiagnostics(
        answers=answers,
        majority=majority,
        majority_size=size,
        reference_answer=ref,
        truncated=int(reference.diagnostics.get("truncated", 0)),
        reference_ne_majority=None if ref is None or majority is None else not matcher.match(ref, majority),
    )
    if gold is not None:
        d.gold = gold
        d.reference_correct = ref is not None and matcher.match(ref, gold)
        d.rollouts_correct = [a is not None and matcher.match(a, gold) for a in answers]
        d.majority_correct = majority is not None and matcher.match(majority, gold)
        # The CaT reward of a rollout vs. the reward an oracle (gold) reference would have given it.
        cat_rewards = [None if ref is None else (a is not None and matcher.match(a, ref)) for a in answers]
        d.reward_agrees_with_gold = [c == g for c, g in zip(cat_rewards, d.rollouts_correct) if c is not None]
    return d


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else NAN


def aggregate(diags: list[GroupDiagnostics], num_generations: int, verifiable: bool = True) -> dict[str, float]:
    """Step-level metrics (keys without the `cat/` prefix). NaN where a rate has no denominator this step."""
    if not diags:
        return {}
    out = {"truncation_rate": _mean(d.truncated / num_generations for d in diags)}
    if verifiable:  # final-answer statistics mean nothing for open-ended responses
        out["majority_ratio"] = _mean(d.majority_size / num_generations for d in diags)
        out["reference_parse_failure"] = _mean(d.reference_answer is None for d in diags)
        out["reference_ne_majority"] = _mean(d.reference_ne_majority for d in diags if d.reference_ne_majority is not None)
    gold = [d for d in diags if d.gold is not None]
    if gold:
        out["label_accuracy"] = _mean(d.reference_correct for d in gold)
        out["majority_accuracy"] = _mean(d.majority_correct for d in gold)
        out["ground_truth_ratio"] = _mean(sum(d.rollouts_correct) / num_generations for d in gold)
        out["pass_at_G"] = _mean(any(d.rollouts_correct) for d in gold)
        out["reward_accuracy"] = _mean(x for d in gold for x in d.reward_agrees_with_gold)
        out["reference_correct_when_ne_majority"] = _mean(d.reference_correct for d in gold if d.reference_ne_majority)
        out["reference_correct_when_all_wrong"] = _mean(d.reference_correct for d in gold if not any(d.rollouts_correct))
    return out


def finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
