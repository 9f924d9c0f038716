"""Tests for cat_trl.estimators.diagnostics: per-group diagnostics and step-level aggregates on hand-made groups.

Every expected value below is worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest

from cat_trl.answers import AnswerMatcher
from cat_trl.estimators import Group, Reference
from cat_trl.estimators.diagnostics import aggregate, analyse_group, finite

G = 4
STRING = AnswerMatcher("string")


def group(*answers):
    return Group(
        prompt="p",
        completions=[f"Reasoning... so \\boxed{{{a}}}." if a is not None else "I am not sure." for a in answers],
    )


def ref(answer, truncated=0):
    return Reference(text=None if answer is None else f"\\boxed{{{answer}}}", answer=answer,
                     diagnostics={"truncated": truncated})


# (group, reference, gold)
CASES = {
    # A: reference agrees with the majority and the gold
    "A": (group("3", "3", "4", None), ref("3"), "3"),
    # B: reference (right) disagrees with a wrong majority 6 (size 3)
    "B": (group("5", "6", "6", "6"), ref("5"), "5"),
    # C: every rollout wrong, the reference synthesises the right answer
    "C": (group("1", "2", "2", "7"), ref("9"), "9"),
    # D: reference without an answer (2 rollouts truncated); all rollouts wrong
    "D": (group("8", "8", "8", "8"), ref(None, truncated=2), "4"),
    # E: reference (wrong) disagrees with a right majority (2-2 tie -> first, "2"); 1 rollout truncated
    "E": (group("2", "2", "3", "3"), ref("3", truncated=1), "2"),
}


def diags(keys=tuple(CASES), gold=True, matcher=STRING):
    return [analyse_group(g, r, matcher, gold_answer if gold else None) for g, r, gold_answer in
            (CASES[k] for k in keys)]


def test_analyse_group_fields():
    a, b, c, d, e = diags()
    assert a.answers == ["3", "3", "4", None] and a.majority == "3" and a.majority_size == 2
    assert a.reference_ne_majority is False and a.reference_correct is True
    assert a.rollouts_correct == [True, True, False, False] and a.majority_correct is True
    assert a.reward_agrees_with_gold == [True, True, True, True]

    assert b.majority == "6" and b.majority_size == 3 and b.reference_ne_majority is True
    assert b.reference_correct is True and b.majority_correct is False

    assert c.majority == "2" and c.reference_ne_majority is True and c.reference_correct is True
    assert c.rollouts_correct == [False] * 4

    assert d.reference_answer is None and d.reference_ne_majority is None and d.reference_correct is False
    assert d.truncated == 2 and d.majority_size == 4
    assert d.reward_agrees_with_gold == []  # no CaT reward without a reference answer

    assert e.majority == "2" and e.majority_correct is True and e.reference_correct is False
    # CaT rewards (vs "3"): 0 0 1 1; gold rewards (vs "2"): 1 1 0 0 -> never agree
    assert e.reward_agrees_with_gold == [False] * 4


def test_aggregate_by_hand():
    m = aggregate(diags(), G)
    expected = {
        # truncated/G: 0, 0, 0, 2/4, 1/4 -> 0.75 / 5
        "truncation_rate": 0.15,
        # majority sizes 2, 3, 2, 4, 2 -> 13 / 20
        "majority_ratio": 0.65,
        # D only
        "reference_parse_failure": 0.2,
        # over A, B, C, E (D has no reference answer): F, T, T, T
        "reference_ne_majority": 0.75,
        # reference correct: A B C, not D E
        "label_accuracy": 0.6,
        # majority correct: A, E
        "majority_accuracy": 0.4,
        # correct rollouts/G: 2/4, 1/4, 0, 0, 2/4 -> 1.25 / 5
        "ground_truth_ratio": 0.25,
        # any rollout correct: A, B, E
        "pass_at_G": 0.6,
        # CaT reward == gold reward: A 4/4, B 4/4, C 4/4, D skipped, E 0/4 -> 12/16
        "reward_accuracy": 0.75,
        # groups where the reference differs from the majority: B (right), C (right), E (wrong)
        "reference_correct_when_ne_majority": 2 / 3,
        # groups where every rollout is wrong: C (right), D (wrong)
        "reference_correct_when_all_wrong": 0.5,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key


def test_rates_without_a_denominator_are_nan_and_dropped_by_finite():
    m = aggregate(diags(("A", "B")), G)
    assert math.isnan(m["reference_correct_when_all_wrong"])  # both groups have a correct rollout
    assert m["reference_correct_when_ne_majority"] == 1.0  # B only
    assert m["label_accuracy"] == 1.0 and m["pass_at_G"] == 1.0
    assert m["ground_truth_ratio"] == pytest.approx((2 / 4 + 1 / 4) / 2)

    m = aggregate(diags(("A",)), G)
    assert math.isnan(m["reference_correct_when_ne_majority"]) and math.isnan(m["reference_correct_when_all_wrong"])
    kept = finite(m)
    assert "reference_correct_when_ne_majority" not in kept and "reference_correct_when_all_wrong" not in kept
    assert kept["label_accuracy"] == 1.0 and kept["reference_ne_majority"] == 0.0

    # only D: no group has both a reference and a majority answer
    m = aggregate(diags(("D",)), G)
    assert math.isnan(m["reference_ne_majority"]) and math.isnan(m["reward_accuracy"])
    assert m["reference_parse_failure"] == 1.0 and m["reference_correct_when_all_wrong"] == 0.0


def test_without_gold_only_label_free_metrics():
    m = aggregate(diags(gold=False), G)
    assert set(m) == {"truncation_rate", "majority_ratio", "reference_parse_failure", "reference_ne_majority"}
    assert m["truncation_rate"] == pytest.approx(0.15) and m["reference_ne_majority"] == pytest.approx(0.75)
    d = diags(("A",), gold=False)[0]
    assert d.gold is None and d.reference_correct is None and d.rollouts_correct is None

    # open-ended tasks: no answer-based rates
    m = aggregate(diags(gold=False), G, verifiable=False)
    assert set(m) == {"truncation_rate"}
    assert aggregate([], G) == {}


def test_mixed_gold_only_counts_groups_with_gold():
    mixed = diags(("A", "C"), gold=True) + diags(("E",), gold=False)
    m = aggregate(mixed, G)
    assert m["label_accuracy"] == 1.0  # A and C only; E (wrong) has no gold
    assert m["ground_truth_ratio"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["majority_ratio"] == pytest.approx((2 + 2 + 2) / 12)  # label-free rates still use all groups


def test_equivalent_matcher_in_metrics():
    g = group("0.5", "0.5", "1/3", "\\frac{1}{2}")
    r = ref("\\frac12")
    string = analyse_group(g, r, STRING, "1/2")
    equivalent = analyse_group(g, r, AnswerMatcher("equivalent"), "1/2")
    # string: majority "0.5" (size 2) differs from the reference \frac12; nothing equals the gold "1/2"
    assert string.majority_size == 2 and string.reference_ne_majority is True
    assert string.reference_correct is False and string.rollouts_correct == [False, False, False, False]
    # equivalent: 0.5, \frac{1}{2}, \frac12 and 1/2 are one value
    assert equivalent.majority_size == 3 and equivalent.reference_ne_majority is False
    assert equivalent.reference_correct is True
    assert equivalent.rollouts_correct == [True, True, False, True]
    assert equivalent.reward_agrees_with_gold == [True] * 4
