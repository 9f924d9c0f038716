"""The standalone vLLM engine and vLLM wherever a user waits: `cat-trl eval` (every method), compare's held-out points
from TRL's colocated engine. Real vLLM (the CPU build), one engine per subprocess: `make test-vllm`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm and runs these"),
]

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2",
       "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}


def _run(argv: list[str], log: Path, timeout: int = 1500) -> None:
    from conftest import free_port

    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *argv], stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"{argv[:3]} exited {proc.returncode}:\n" + log.read_text()[-6000:])


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, math500_path, embedded_model_path) -> dict:
    tmp = tmp_path_factory.mktemp("vllm-standalone")
    _run([str(REPO / "tests" / "scripts" / "vllm_standalone.py"), "--math500", str(math500_path),
          "--out", str(tmp / "r.json")], tmp / "log.txt")
    return json.loads((tmp / "r.json").read_text())


def test_the_factory_builds_a_standalone_vllm_engine(standalone):
    assert standalone["engine_type"] == "VLLMEngine" and standalone["max_context"] == 2048
    assert standalone["stats"]["calls"] >= 6 and standalone["stats"]["completion_tokens"] > 0


def test_greedy_texts_equal_transformers_or_score_the_same_continuation(standalone):
    """float32 on both sides: equal greedy texts, or where a near-tie flips a token, the same continuation scored by
    both engines within 0.02 nats per token (mean) -- the same model, not merely a similar one."""
    v, t = standalone["greedy"]["vllm"], standalone["greedy"]["transformers"]
    assert len(v) == len(t) == 6 and all(t)
    assert sum(a == b for a, b in zip(v, t)) >= 3  # most are identical
    lv, lt = standalone["differing_logprobs"]["vllm"], standalone["differing_logprobs"]["transformers"]
    for row_v, row_t in zip(lv, lt):
        assert len(row_v) == len(row_t) > 0
        assert sum(abs(a - b) for a, b in zip(row_v, row_t)) / len(row_v) < 0.02


def test_continuation_logprobs_match_transformers(standalone):
    v, t = standalone["logprobs"]["vllm"], standalone["logprobs"]["transformers"]
    assert [len(r) for r in v] == [len(r) for r in t] and all(len(r) > 2 for r in v)
    assert max(abs(a - b) for rv, rt in zip(v, t) for a, b in zip(rv, rt)) < 0.02
    # a sensible ranking: the boxed answer is likelier per token than gibberish would be, and all are finite
    assert all(math.isfinite(x) for r in v for x in r)


def test_next_token_logprobs_match_transformers(standalone):
    v, t = standalone["next_token"]["vllm"], standalone["next_token"]["transformers"]
    assert len(v) == len(t) == 4
    for rv, rt in zip(v, t):
        for cand in ("yes", "no"):
            assert abs(rv[cand] - rt[cand]) < 0.02
            assert rv[cand] <= 0


def test_seeded_sampling_is_reproducible_and_each_request_has_its_own_seed(standalone):
    s = standalone["seeded"]
    assert s["first"] == s["again"]  # the same call seed: the same samples
    assert len(set(s["first"])) > 1  # G identical prompts in one call: not G identical samples
    assert s["first"] != s["other_seed"]


def test_a_seeded_call_over_the_step_budget_runs_in_waves_and_is_reproducible(standalone):
    """More seeded prompt tokens than one vLLM scheduler step takes: unsplit, vLLM chunks a prefill and its CPU engine
    dies (`CPU Generator does not use offset`); the engine sends waves, keeping each request's seed."""
    s = standalone["long_seeded"]
    assert sum(s["prompt_tokens"]) > s["budget"]  # the case that crashed
    assert s["waves"] >= 2
    assert all(n > 0 for n in s["completion_tokens"])
    assert s["first"] == s["again"] and len(set(s["first"])) > 1


def test_stop_strings_end_the_text_as_in_transformers(standalone):
    """The text ends at the stop string, which stays in it (the transformers engine's convention)."""
    v, t = standalone["stop"]["vllm"], standalone["stop"]["transformers"]
    assert v == t and all(text.endswith(".") and text.count(".") == 1 for text in v)


def test_min_new_tokens_reaches_vllm(standalone):
    assert standalone["min_tokens"]["free"] < 30 <= standalone["min_tokens"]["forced"]


# ---------------------------------------------------------------------------------------------- cat-trl eval

EVAL_METHODS = ["single", "majority", "self_bon", "min_ppl", "mutual_predictability", "synthesis",
                "synthesis_with_question"]


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, math500_path) -> dict:
    tmp = tmp_path_factory.mktemp("vllm-eval")
    out = tmp / "eval"
    _run(["-m", "cat_trl.cli", "eval", str(REPO / "yaml" / "eval" / "quickstart-cpu.yaml"), "--engine", "vllm",
          "--dataset_name", str(math500_path), "--dataset_max_samples", "4", "--num_generations", "[1, 2]",
          "--max_new_tokens", "48", "--anchor_max_new_tokens", "48", "--selector_max_new_tokens", "8",
          "--max_context", "2048", "--report_to", "none", "--progress", "false", "--output_dir", str(out)],
         tmp / "log.txt")
    return json.loads((out / "eval_results.json").read_text())


def test_eval_runs_every_method_through_the_vllm_engine(eval_run):
    meta = eval_run["meta"]
    assert meta["engine_kind"] == "vllm" and meta["engine"].startswith("vllm:")
    assert meta["n_questions"] == 4 and meta["pool_generated_tokens"] > 0
    table = json.dumps(eval_run)
    for method in EVAL_METHODS:
        assert f'"{method}"' in table, method


# ---------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("vllm-compare")
    out = tmp / "cmp"
    _run(["-m", "cat_trl.cli", "compare", str(REPO / "tests" / "recipes" / "compare-tiny-vllm.yaml"),
          "--output_dir", str(out)], tmp / "log.txt")
    return json.loads((out / "compare_results.json").read_text())


def test_compare_heldout_points_come_from_the_colocated_engine(compare_run):
    arms = compare_run["runs"]["default"]["arms"]
    curve = arms["cat"]["curve"]
    assert [r["step"] for r in curve] == [0, 1, 2]
    # every point, step 0 included, decoded by the policy synced into TRL's colocated vLLM engine
    assert {r["engine"] for r in curve} == {"vllm-colocate:policy"}
    assert arms["none"]["curve"][0] == curve[0] and arms["none"]["scored_in"] == "cat"
    for r in curve:
        assert len(r["problems"]) == 8 and 0 <= r["greedy_accuracy"] <= 1


# ---------------------------------------------------------------------------------------------- healthbench-eval


def test_healthbench_eval_samples_the_policy_with_the_vllm_engine(tmp_path, embedded_model_path):
    """`cat-trl healthbench-eval --engine vllm`: the policy's responses come from a standalone vLLM engine (the
    grader is the same model, local, in transformers), and the result file names the engine."""
    out = tmp_path / "hb.json"
    _run(["-m", "cat_trl.cli", "healthbench-eval", "--data", str(REPO / "tests" / "fixtures" / "healthbench_sample.jsonl"),
          "--holdout", "2", "--policy", embedded_model_path, "--engine", "vllm", "--policy-max-new-tokens", "24",
          "--grader-local", embedded_model_path, "--grader-max-attempts", "1", "--grader-max-new-tokens", "16",
          "--bootstrap-samples", "20", "--output", str(out)], tmp_path / "log.txt")
    result = json.loads(out.read_text())
    assert result["policy_engine"]["kind"] == "vllm" and result["policy_engine"]["name"].startswith("vllm:")
    assert result["n_examples"] == 2 and all(e["response"].strip() for e in result["examples"])
    assert 0.0 <= result["score"] <= 1.0
