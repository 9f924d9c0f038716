"""The benchmark script runs (reduced form) and reports what it claims; the full form is `python benchmarks/run.py`.
Timings are not asserted (performance goals live in the benchmark's printed ratios, not in tests); what is asserted
is what must hold on any machine: one anchor call per step, zero extra weight memory for the policy-sharing anchors,
and that every section produced its numbers."""

from __future__ import annotations

import json
import os
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


def _step(tmp_path, *args) -> dict:
    """benchmarks/vllm_step.py reduced: G = 2, one prompt, 8-token rollouts, 2 steps (the first is dropped), one
    process per arm, on the embedded model."""
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "vllm_step.py"), "--g", "2", "--prompts", "1",
                           "--length", "8", "--steps", "2", "--reps", "1", "--output", str(out), *args],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check_step(result: dict, synthesis: int) -> None:
    # what the ratio assumes: the anchor's synthesis ran to its forced length (an anchor that may stop early
    # understates CaT's share) and both arms decoded full-length rollouts; one anchor call per step
    assert result["anchor_tokens_per_synthesis"] == synthesis
    assert result["rollout_mean_length"] == {"plain": 8, "cat": 8}
    assert result["anchor_calls_per_step"] == 1
    split = result["step_split_s"]
    assert set(split["cat"]) == {"rollout", "logprob", "reward", "backward", "policy_sync"}
    # the reward is where CaT's anchor runs; plain GRPO's label reward is a string comparison
    assert split["cat"]["reward"]["median"] > 10 * split["plain"]["reward"]["median"]
    assert result["provenance"]["git"]["revision"] and result["config"]["synthesis_length"] == synthesis


def test_step_benchmark_forces_both_lengths_and_splits_the_step(tmp_path):
    """Transformers rollouts (no vLLM needed): synthesis forced to 12 tokens, rollouts to 8, no weight sync."""
    result = _step(tmp_path, "--rollouts", "transformers", "--synthesis-length", "12")
    _check_step(result, 12)
    assert result["setting"]["rollouts"] == "transformers" and result["rollouts"] is None
    assert result["step_split_s"]["plain"]["policy_sync"]["median"] == 0


@pytest.mark.vllm
def test_vllm_step_benchmark_forces_both_lengths_and_splits_the_step(tmp_path):
    """Rollouts and the anchor in TRL's colocated vLLM engine: the same checks, plus a weight sync in both arms."""
    pytest.importorskip("vllm")
    result = _step(tmp_path, "--synthesis-length", "12")
    _check_step(result, 12)
    assert result["step_split_s"]["plain"]["policy_sync"]["median"] > 0
    assert result["step_split_s"]["cat"]["policy_sync"]["median"] > 0
    assert result["rollouts"]["vllm_tok_per_s"] > 0


# vLLM's CPU build otherwise reserves 92 % of the machine's memory and refuses to start when less is free
VLLM_CPU_ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}


@pytest.mark.vllm
def test_heldout_point_is_the_same_on_both_engines(tmp_path):
    """benchmarks/eval_engines.py's held-out point (compare's recipe, greedy + 1 sample): vLLM and transformers
    (float32) decode the same greedy answers, so the timing compares equal work."""
    pytest.importorskip("vllm")
    results = {}
    for engine in ("vllm", "transformers"):
        out = tmp_path / f"{engine}.json"
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_engines.py"), "--heldout-child", engine,
                               "--heldout", "6", "--child-out", str(out)], capture_output=True, text=True,
                              timeout=1200, cwd=REPO, env=VLLM_CPU_ENV)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[engine] = json.loads(out.read_text())
    assert results["vllm"]["engine_name"].startswith("vllm:")
    assert results["vllm"]["problems"] == results["transformers"]["problems"] == 6
    for key in ("greedy_accuracy", "ood_greedy_accuracy"):
        assert results["vllm"][key] == results["transformers"][key], key
