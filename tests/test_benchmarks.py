"""The benchmark script runs (reduced form) and reports what it claims; the full form is `python benchmarks/run.py`.
Timings are not asserted (performance goals live in the benchmark's printed ratios, not in tests); what is asserted
is what must hold on any machine: one anchor call per step, zero extra weight memory for the policy-sharing anchors,
and that every section produced its numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--output", str(out), *args],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_reward_and_memory_sections(tmp_path):
    result = _run(tmp_path, "--only", "reward,memory")
    reward = result["reward"]
    for mix in ("math500", "integers"):
        n = reward[mix]["completions"]
        for variant in ("string", "equivalent", "equivalent_no_numeric_fast_path", "equivalent_no_probe_rejection",
                        "equivalent_neither"):
            # every completion was decided exactly once, by one of the matcher's paths
            assert sum(reward[mix][variant]["matcher_outcomes"].values()) == n, (mix, variant)
        # the numeric fast path really replaces math-verify calls, and switching it off sends those to math-verify
        fast, off = reward[mix]["equivalent"]["matcher_outcomes"], reward[mix]["equivalent_no_numeric_fast_path"][
            "matcher_outcomes"]
        assert fast.get("numeric", 0) > 0 and off.get("numeric", 0) == 0
        assert fast["fast_path"] == off["fast_path"]  # the string fast path in front is the same in both
    memory = result["memory"]
    assert memory["peft_base"]["extra_mb"] == 0 and memory["ref_model"]["extra_mb"] == 0
    # a separate frozen copy costs exactly one more copy of the weights (a dtype or duplication bug would move this)
    assert memory["copy"]["extra_mb"] == pytest.approx(memory["copy"]["plain_weight_mb"], rel=0.01)


@pytest.mark.slow
def test_full_quick_benchmark(tmp_path):
    result = _run(tmp_path)
    step = result["step"]["4"]
    assert step["plain_step_s"] > 0 and step["cat_step_s"] > 0
    assert step["anchor_calls_per_step"] == 1  # all of a step's syntheses in one engine call
    assert set(result["anchor"]) == {"1", "4"}
    judge = result["judge"]
    assert judge["logprob"]["completion_tokens"] == 0 and judge["generate"]["completion_tokens"] > 0
    assert judge["logprob_no_prefix_sharing"]["prompt_tokens"] == judge["logprob"]["prompt_tokens"]
    assert judge["prefix_sharing_speedup"] > 0
