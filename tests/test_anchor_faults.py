"""The server anchor (`cat_anchor_engine: openai`) overlapped with TRL's log-prob passes, and its faults for real: a
scripted OpenAI-compatible server process on loopback (benchmarks/loopback_anchor.py) is killed in the middle of a
training run and started again, answers 5xx, or stalls past the client's timeout. The run goes on; the groups whose
synthesis failed get no reward and are counted; no step is lost or repeated; the run summary says how many."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from transformers import TrainerCallback

from cat_trl import CaTGRPOConfig, CaTGRPOTrainer
from cat_trl.callbacks import RunSummaryCallback
from cat_trl.data import load_synthetic_math
from cat_trl.engines.overlap import OverlappedEngine

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "benchmarks" / "loopback_anchor.py"
STEPS = 4
GROUPS_PER_STEP = 2


class Server:
    """The loopback anchor as its own process (so that killing it is real), on a fixed port across restarts."""

    def __init__(self, tmp: Path):
        from conftest import free_port

        self.port, self.control = free_port(), tmp / "control.json"
        self.control.write_text("{}")
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(self.port),
                                      "--control", str(self.control)])
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the loopback anchor did not come up")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def set(self, **settings) -> None:
        self.control.write_text(json.dumps(settings))

    def outcomes(self) -> list[str]:
        log = Path(str(self.control) + ".log")
        return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.kill()


class AtStep(TrainerCallback):
    """Runs `actions[step]` when training step `step` begins (1-based: the step about to run)."""

    def __init__(self, actions: dict):
        self.actions, self.started = actions, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.started.append(state.global_step + 1)
        if state.global_step + 1 in self.actions:
            self.actions[state.global_step + 1]()


def _train(tmp_path, tiny_model_path, server, actions: dict, **overrides):
    args = CaTGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, num_generations=4,
        per_device_train_batch_size=4 * GROUPS_PER_STEP, max_completion_length=12, max_steps=STEPS,
        activation_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], learning_rate=1e-3,
        seed=0, beta=0.04, cat_anchor_engine="openai", cat_anchor_base_url=server.url,
        cat_anchor_model_name_or_path="loopback-anchor", cat_anchor_max_new_tokens=16, cat_anchor_timeout=2.0,
        cat_anchor_max_retries=1, cat_match="string", cat_answer_extraction="boxed", **overrides)
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=args, train_dataset=load_synthetic_math(64, seed=0))
    steps = AtStep(actions)
    summary = RunSummaryCallback()
    trainer.add_callback(steps)
    trainer.add_callback(summary)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    return trainer, steps, logged, json.loads((tmp_path / "out" / "cat_summary.json").read_text())


def _check_run(trainer, steps, logged, summary, failed_steps: set[int]):
    assert trainer.state.global_step == STEPS and steps.started == list(range(1, STEPS + 1))  # none lost or repeated
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    per_step = {h["step"]: h.get("cat/anchor_failed_groups", 0) for h in logged}
    assert {s for s, n in per_step.items() if n} == failed_steps
    assert all(per_step[s] == GROUPS_PER_STEP for s in failed_steps)  # every group of a failed step, counted
    total = GROUPS_PER_STEP * len(failed_steps)
    assert trainer.cat_anchor_failed_groups_total == total
    assert summary["metrics"]["cat/anchor_failed_groups_total"]["total"] == total
    for h in logged:  # a failed step: no reference, no reward (NaN rewards are not averaged into 'reward')
        if h["step"] in failed_steps:
            assert h["cat/reference_parse_failure"] == 1.0
        else:
            assert h["cat/reference_parse_failure"] == 0.0


def test_killed_and_restarted_server_costs_the_groups_of_the_steps_it_was_down(tmp_path, tiny_model_path, server):
    trainer, steps, logged, summary = _train(tmp_path, tiny_model_path, server,
                                             {2: server.kill, 3: server.start})
    _check_run(trainer, steps, logged, summary, failed_steps={2})
    assert isinstance(trainer.cat_engine, OverlappedEngine) and trainer.cat_engine.collected == STEPS


def test_5xx_answers_cost_those_groups_only(tmp_path, tiny_model_path, server):
    trainer, steps, logged, summary = _train(tmp_path, tiny_model_path, server,
                                             {2: lambda: server.set(status=503), 3: lambda: server.set()})
    _check_run(trainer, steps, logged, summary, failed_steps={2})
    assert "status 503" in server.outcomes()  # the client did reach the server and was refused


def test_a_stalled_server_times_out_and_the_run_goes_on(tmp_path, tiny_model_path, server):
    trainer, steps, logged, summary = _train(tmp_path, tiny_model_path, server,
                                             {3: lambda: server.set(stall=8), 4: lambda: server.set()})
    _check_run(trainer, steps, logged, summary, failed_steps={3})


def test_on_failure_raise_fails_the_step(tmp_path, tiny_model_path, server):
    with pytest.raises(RuntimeError, match="Reference estimation failed"):
        _train(tmp_path, tiny_model_path, server, {2: server.kill}, cat_anchor_on_failure="raise")


@pytest.mark.parametrize("overlap", [True, False])
def test_overlapped_and_serial_anchor_give_the_same_references(tmp_path, tiny_model_path, server, overlap):
    """The overlapped requests are the serial ones: the same prompts reach the server, the same number of times."""
    server.set(latency=0.2)
    trainer, steps, logged, summary = _train(tmp_path, tiny_model_path, server, {}, cat_anchor_overlap=overlap,
                                             cat_anchor_seed=0)
    assert isinstance(trainer.cat_engine, OverlappedEngine) == overlap
    assert server.outcomes().count("ok") == STEPS * GROUPS_PER_STEP  # one request per group: nothing sent twice
    assert all(h["cat/reference_parse_failure"] == 0.0 for h in logged)
    if overlap:
        assert trainer.cat_engine.collected == STEPS and trainer.cat_engine.discarded == 0
        assert all("cat/anchor_hidden_seconds" in h and "cat/anchor_wait_seconds" in h for h in logged)
