"""CaTGRPOTrainer in the open-ended regime: real TRL steps, the freeform synthesis + rubric anchor, a real judge,
HealthBench-schema prompts. The anchor runs either in-process (tiny random model: its rubrics fail to parse, which
must be counted, not crash) or as an OpenAI-compatible server on loopback that writes well-formed rubrics."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cat_trl.config import CaTGRPOConfig
from cat_trl.data import load_healthbench
from cat_trl.rubrics import Judge, JudgeItem
from cat_trl.trainer import CaTGRPOTrainer

FIXTURE = Path(__file__).parent / "fixtures" / "healthbench_sample.jsonl"
CRITERIA = ["Mentions rest.", "Mentions fluids.", "Suggests a doctor.", "Is polite.", "Avoids a diagnosis."]


def _config(tmp_path, **overrides) -> CaTGRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, num_generations=4,
        per_device_train_batch_size=8, max_completion_length=16, max_steps=1, activation_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to=[], learning_rate=1e-3, seed=0,
        cat_reward="rubric", cat_anchor_max_new_tokens=16, cat_judge_engine="transformers", cat_judge_mode="logprob",
    )
    base.update(overrides)
    return CaTGRPOConfig(**base)


class _Spy:
    __name__ = "spy"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if k not in ("trainer_state", "log_extra", "log_metric")})
        return [None] * len(completions)  # observes only: must not make unscorable rows scorable


def _rows(tmp_path):
    return [json.loads(line) for line in (tmp_path / "out" / "cat_groups.jsonl").read_text().splitlines()]


def test_rubric_regime_counts_unparseable_rubrics(tmp_path, tiny_model_path):
    spy = _Spy()
    args = _config(tmp_path, cat_judge_model=tiny_model_path)
    dataset = load_healthbench(str(FIXTURE), "train", holdout=1)
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    trainer.reward_funcs.append(spy)  # after construction: TRL would otherwise weight it
    trainer.reward_func_names.append("spy")
    trainer.reward_weights = __import__("torch").cat([trainer.reward_weights, trainer.reward_weights.new_zeros(1)])
    trainer.reward_processing_classes.append(None)
    trainer.train()
    assert trainer.state.global_step == 1
    history = [h for h in trainer.state.log_history if "cat/rubric_failure" in h]
    assert history and history[0]["cat/rubric_failure"] == 1.0  # random weights write no XML: all counted
    rows = _rows(tmp_path)
    assert len(rows) == 2 and all(r["rubric"] is None and r["rubric_error"] for r in rows)
    assert all(r["rewards"] == [None] * 4 for r in rows)  # unscorable, not zero
    assert spy.calls and all("gold_rubrics" not in c and "cat_rubric" in c for c in spy.calls)


class _AnchorServer(BaseHTTPRequestHandler):
    """pi_0 behind an OpenAI-compatible API, scripted so that it writes a unified response and a well-formed rubric
    (what a capable anchor does), so the judge and reward path get real rubrics."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        self.server.prompts.append(prompt)
        if "# Reference response" in prompt:
            text = "Here you go:\n<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in CRITERIA) + "</rubric>"
        else:
            text = "# UNIFIED RESPONSE\nRest, drink fluids and see a doctor if it gets worse."
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 10}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def anchor_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _AnchorServer)
    srv.prompts = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_server_anchor_rubrics_give_judged_fraction_rewards(tmp_path, tiny_model_path, anchor_server):
    srv, url = anchor_server
    args = _config(tmp_path, cat_judge_model=tiny_model_path, cat_anchor_engine="openai", cat_anchor_base_url=url,
                   cat_anchor_model_name_or_path="pi0")
    dataset = load_healthbench(str(FIXTURE), "train", holdout=1)
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    assert trainer.cat_anchor_source == "server"
    trainer.train()
    rows = _rows(tmp_path)
    assert len(rows) == 2
    synthesis = [p for p in srv.prompts if "# Reference response" not in p]
    rubric_prompts = [p for p in srv.prompts if "# Reference response" in p]
    assert len(synthesis) == 2 and len(rubric_prompts) == 2
    for row in rows:
        assert row["rubric"] == CRITERIA
        assert row["prompt"] not in "".join(synthesis)  # question-blind synthesis
    # Rewards: the fraction of the 5 criteria the (tiny, real) judge marks met, recomputed independently.
    judge = Judge(trainer.cat_judge.engine, "logprob")
    step = [h for h in trainer.state.log_history if "cat/rubric_failure" in h][0]
    assert step["cat/rubric_failure"] == 0.0 and step["cat/rubric_size"] == 5.0
    checked = 0
    for row in rows:
        conversation = next(r["prompt"] for r in dataset if r["question"] == row["prompt"])
        for completion, reward in zip(row["completions"], row["rewards"]):
            verdicts = judge.judge([JudgeItem(conversation, completion, c) for c in CRITERIA])
            assert reward == pytest.approx(sum(v.met for v in verdicts) / 5)
            checked += 1
    assert checked == 8


def test_physician_oracle_sees_rubrics_only_when_chosen(tmp_path, tiny_model_path):
    args = _config(tmp_path, cat_reward="physician_rubric", cat_judge_model=tiny_model_path)
    dataset = load_healthbench(str(FIXTURE), "train", holdout=1)
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=args, train_dataset=dataset)
    trainer.train()
    rows = _rows(tmp_path)
    assert all(r is not None for row in rows for r in row["rewards"])  # physician scores for every completion
    assert trainer.cat_engine is None and all(row["reference"] is None for row in rows)  # no anchor work


def test_open_ended_config_errors():
    with pytest.raises(ValueError, match="cat_judge_base_url"):
        CaTGRPOConfig(output_dir="x", use_cpu=True, bf16=False, cat_reward="rubric")
    with pytest.raises(ValueError, match="cat_estimator: synthesis"):
        CaTGRPOConfig(output_dir="x", use_cpu=True, bf16=False, cat_reward="rubric", cat_estimator="majority",
                      cat_judge_engine="anchor")
    with pytest.raises(ValueError, match="could never fire"):
        CaTGRPOConfig(output_dir="x", use_cpu=True, bf16=False, cat_reward="rubric", cat_judge_engine="anchor",
                      max_completion_length=64, cat_length_penalty_tokens=64)
    with pytest.raises(ValueError, match="cat_estimator: synthesis"):
        CaTGRPOConfig(output_dir="x", use_cpu=True, bf16=False, cat_reward="physician_rubric", cat_estimator="majority",
                      cat_judge_engine="anchor")
    with pytest.raises(ValueError, match="cat_anchor_base_url"):
        CaTGRPOConfig(output_dir="x", use_cpu=True, bf16=False, cat_anchor_engine="openai")


def test_http_judge_runs_as_async_reward_off_the_main_thread(tmp_path, tiny_model_path, anchor_server, served_model):
    """Anchor and judge both behind OpenAI-compatible servers; the judge is a real model (`transformers serve`)."""
    from trl.trainer.utils import is_async_callable

    srv, url = anchor_server
    judge_url, judge_model = served_model
    args = _config(tmp_path, cat_anchor_engine="openai", cat_anchor_base_url=url, cat_anchor_model_name_or_path="pi0",
                   cat_judge_engine="openai", cat_judge_base_url=judge_url, cat_judge_model=judge_model,
                   cat_judge_mode="generate", cat_judge_max_new_tokens=3, per_device_train_batch_size=4)
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=args,
                             train_dataset=load_healthbench(str(FIXTURE), "train", holdout=1))
    reward = trainer.reward_funcs[0]
    assert is_async_callable(reward)
    assert trainer.cat_judge.chat_template_kwargs is None  # the policy's template kwargs are not sent to the judge
    trainer.train()
    assert reward.last_thread != "MainThread"
    (row,) = _rows(tmp_path)
    assert row["rubric"] == CRITERIA
    assert all(r is not None and abs(r * 5 - round(r * 5)) < 1e-5 for r in row["rewards"]), row["rewards"]
    assert trainer.cat_judge.engine.stats.sequences == 4 * 5  # every (rollout, criterion) pair judged once


def test_healthbench_validation_split_is_disjoint():
    kwargs = dict(holdout=1, validation=2, validation_seed=0)
    train = {r["problem_id"] for r in load_healthbench(str(FIXTURE), "train", **kwargs)}
    validation = {r["problem_id"] for r in load_healthbench(str(FIXTURE), "validation", **kwargs)}
    held = {r["problem_id"] for r in load_healthbench(str(FIXTURE), "eval", **kwargs)}
    assert len(validation) == 2 and len(held) == 1 and len(train) == 3
    assert not train & validation and not train & held and not validation & held
    assert held == {r["problem_id"] for r in load_healthbench(str(FIXTURE), "eval", holdout=1)}  # hold-out unchanged
    with pytest.raises(ValueError, match="healthbench_validation > 0"):
        load_healthbench(str(FIXTURE), "validation", holdout=1)


def test_early_stopping_records_the_best_validation_checkpoint(tmp_path, tiny_model_path, anchor_server):
    """`cat-trl train` with healthbench_validation scores the validation questions during training (self-rubric
    reward), records the best checkpoint, and healthbench-eval resolves a run directory to it."""
    import yaml

    from cat_trl.cli.healthbench_eval import resolve_policy
    from cat_trl.cli.train import ConfigError, main, parse_args, run

    _, url = anchor_server
    out = tmp_path / "run"
    recipe = dict(
        model_name_or_path=tiny_model_path, dtype="float32", dataset_name=str(FIXTURE), dataset_format="healthbench",
        healthbench_holdout=1, healthbench_validation=2, use_cpu=True, bf16=False, num_generations=4,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, max_completion_length=16, max_steps=2,
        activation_checkpointing=False, logging_steps=1, report_to=[], learning_rate=1e-3, seed=0,
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, metric_for_best_model="eval_reward",
        cat_reward="rubric", cat_anchor_engine="openai", cat_anchor_base_url=url,
        cat_anchor_model_name_or_path="pi0", cat_anchor_max_new_tokens=16, cat_judge_engine="transformers",
        cat_judge_model=tiny_model_path, cat_judge_mode="logprob", output_dir=str(out),
    )
    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in recipe.items() if k != "metric_for_best_model"}))
    with pytest.raises(ConfigError, match="metric_for_best_model: eval_reward"):
        run(*parse_args(["--config", str(path)]))
    path.write_text(yaml.safe_dump(recipe))
    assert main(["--config", str(path)]) == 0
    best = json.loads((out / "best_checkpoint.json").read_text())
    assert best["metric"] == "eval_reward" and best["validation_questions"] == 2
    scores = {s["step"]: s["eval_reward"] for s in best["scores"]}
    assert sorted(scores) == [1, 2]
    best_step = max(scores, key=lambda s: scores[s])
    assert best["checkpoint"].endswith(f"checkpoint-{best_step}") and best["value"] == scores[best_step]
    assert resolve_policy(str(out)) == (best["checkpoint"], best)
    assert resolve_policy(best["checkpoint"]) == (best["checkpoint"], None)
