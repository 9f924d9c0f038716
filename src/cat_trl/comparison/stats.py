"""Paired statistics for held-out comparisons: two policies scored on the *same* problems.

Why paired: the arms' accuracies share the problems, so the difference's uncertainty is far smaller (and the unpaired
s.e. of one arm is the wrong yardstick). Each comparison gives the mean per-problem difference with a 95 % percentile
interval from a seeded paired bootstrap over problems, and, for one seed of 0/1 outcomes, the exact McNemar test on the
discordant pairs. "not distinguishable" is written whenever the interval holds 0.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def exact_mcnemar(b_only: int, a_only: int) -> float:
    """Two-sided exact McNemar p-value: under H0 each discordant pair is equally likely to favour either side."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Mean of `a - b` over problems (index-aligned: the same problems) with a paired-bootstrap interval.

    `a`, `b`: per-problem scores in [0, 1] -- 0/1 correctness for one seed, the mean over seeds for several.

    Returns `diff`, `low`, `high`, `n`, `a_only` / `b_only` (problems where one side scores higher), `mcnemar_p` (only
    when both are 0/1) and `distinguishable` (False when the interval holds 0).
    """
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same problems: {len(a)} vs {len(b)} scores")
    if not a:
        raise ValueError("paired comparison of no problems")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    rng = random.Random(seed)
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo_i = int(math.floor((1 - level) / 2 * n_boot))
    hi_i = min(n_boot - 1, int(math.ceil((1 + level) / 2 * n_boot)) - 1)
    low, high = means[lo_i], means[hi_i]
    a_only, b_only = sum(x > 0 for x in d), sum(x < 0 for x in d)
    binary = all(float(x) in (0.0, 1.0) for x in (*a, *b))
    return {"diff": sum(d) / n, "low": low, "high": high, "n": n, "a_only": a_only, "b_only": b_only,
            "mcnemar_p": exact_mcnemar(b_only, a_only) if binary else None,
            "distinguishable": not (low <= 0.0 <= high)}


def describe(result: dict, a: str, b: str) -> str:
    """One sentence: `a` vs `b`, the difference and its interval, or "not distinguishable"."""
    core = f"{a} − {b}: {result['diff']:+.3f} (95 % CI {result['low']:+.3f} to {result['high']:+.3f}, n = {result['n']}"
    if result.get("seeds"):
        core += f" problems x {result['seeds']} seed{'s' if result['seeds'] > 1 else ''}"
    if result.get("mcnemar_p") is not None:
        core += f", McNemar p = {result['mcnemar_p']:.3g}"
    core += ")"
    return core + ("" if result["distinguishable"] else " — not distinguishable")


def mean_spread(values: Sequence[float]) -> dict:
    """Mean over seeds with the sample standard deviation and the range (one seed: sd None)."""
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    sd = None if len(vals) < 2 else math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    return {"mean": m, "sd": sd, "min": min(vals), "max": max(vals), "seeds": len(vals)}
