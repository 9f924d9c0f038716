"""Paired statistics of held-out comparisons (comparison/stats.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cat_trl.comparison.stats import describe, exact_mcnemar, mean_spread, paired_difference


def test_exact_mcnemar_matches_the_binomial_tail():
    assert exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(0, 6) == pytest.approx(2 / 2**6)  # 6 discordant pairs all one way
    assert exact_mcnemar(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert exact_mcnemar(5, 5) == 1.0


def test_paired_difference_of_identical_arms_is_not_distinguishable():
    a = [1, 0, 1, 1, 0, 0, 1, 0] * 5
    r = paired_difference(a, a)
    assert r["diff"] == 0 and r["low"] == r["high"] == 0 and not r["distinguishable"] and r["mcnemar_p"] == 1.0
    assert "not distinguishable" in describe(r, "A", "B")


def test_a_clear_paired_gain_is_distinguishable_and_the_interval_is_tight():
    b = [0] * 60 + [1] * 40
    a = [1] * 30 + [0] * 30 + [1] * 40  # A fixes 30 of B's errors, breaks nothing
    r = paired_difference(a, b, seed=1)
    assert r["diff"] == pytest.approx(0.30) and r["a_only"] == 30 and r["b_only"] == 0
    assert 0.19 < r["low"] < 0.30 < r["high"] < 0.42 and r["distinguishable"]
    assert r["mcnemar_p"] == pytest.approx(2 / 2**30)
    # paired: far tighter than treating the arms as independent samples (sqrt(p(1-p)/n) each)
    unpaired_se = math.sqrt(0.7 * 0.3 / 100 + 0.4 * 0.6 / 100)
    assert (r["high"] - r["low"]) / 3.92 < unpaired_se


def test_a_noisy_difference_straddling_zero_is_not_distinguishable():
    a = [1, 0] * 20
    b = [0, 1] * 19 + [1, 0]  # 20 discordant each way but one
    r = paired_difference(a, b)
    assert r["low"] < 0 < r["high"] and not r["distinguishable"] and r["mcnemar_p"] > 0.5


def test_seed_means_are_paired_by_problem_and_mcnemar_only_for_binary():
    r = paired_difference([0.5, 1.0, 0.0], [0.5, 0.5, 0.0])
    assert r["diff"] == pytest.approx(1 / 6) and r["mcnemar_p"] is None
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([1, 0], [1])


def test_mean_spread():
    m = mean_spread([0.2, 0.4])
    assert m["mean"] == pytest.approx(0.3) and m["sd"] == pytest.approx(math.sqrt(0.02)) and m["seeds"] == 2
    assert mean_spread([0.5])["sd"] is None
