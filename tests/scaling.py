"""`assert_linear`: "linear, not quadratic" proved by the ratio of run times at two input sizes, not by a wall-clock
bound (a `< 1.0 s` bound fails on a loaded CI machine and says nothing about growth). Times are the process's CPU
time (`time.process_time`), measured interleaved, best of several: other jobs on the machine do not enter them."""

from __future__ import annotations

import time
from collections.abc import Callable


def assert_linear(run: Callable[[object], object], build: Callable[[int], object], n: int, *, factor: int = 8,
                  repeats: int = 5, floor: float = 5e-3) -> tuple[float, float]:
    """`run(build(factor * n))` takes at most `factor * 4` times the CPU time of `run(build(n))` (a quadratic step
    would take `factor ** 2` times: 64x at the default 8x input). The small time is floored at `floor` seconds so
    timer granularity on a millisecond run cannot fail the check."""
    small, large = build(n), build(factor * n)
    best = {"small": float("inf"), "large": float("inf")}
    for _ in range(repeats):
        for key, value in (("small", small), ("large", large)):
            start = time.process_time()
            run(value)
            best[key] = min(best[key], time.process_time() - start)
    t_small, t_large = best["small"], best["large"]
    assert t_large < factor * 4 * max(t_small, floor), (
        f"{factor}x the input took {t_large / max(t_small, 1e-9):.0f}x the CPU time ({t_small:.4f} s -> "
        f"{t_large:.4f} s): superlinear")
    return t_small, t_large
