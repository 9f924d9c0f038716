"""CaTGRPOTrainer end to end on CPU: real TRL training steps, real models, real anchor calls."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from cat_trl.config import CaTGRPOConfig
from cat_trl.data import load_synthetic_math
from cat_trl.data.prompts import add_fewshot
from cat_trl.engines import SamplingSettings, TransformersEngine
from cat_trl.estimators import build_synthesis_prompt
from cat_trl.rewards import CaTMathReward
from cat_trl.trainer import CaTGRPOTrainer


def _config(tmp_path: Path, **overrides) -> CaTGRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=16,
        max_steps=1,
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        learning_rate=1e-3,
        seed=0,
        cat_anchor_max_new_tokens=16,
    )
    base.update(overrides)
    return CaTGRPOConfig(**base)


def _dataset(n: int = 8, fewshot: int = 0) -> Dataset:
    ds = load_synthetic_math(n, seed=0, max_steps=1, instruction="Put your final answer within \\boxed{}.")
    if fewshot:
        ds = ds.map(lambda r: {"prompt": add_fewshot(r["prompt"], fewshot, "Put your final answer within \\boxed{}.")})
    return ds


def _rows(trainer) -> list[dict]:
    from cat_trl.callbacks import read_group_rows

    return read_group_rows(trainer.args.output_dir)


def test_calculate_rewards_signature_is_the_one_we_override():
    """We override a private TRL hook; pin its signature so a TRL upgrade that changes it fails loudly here."""
    params = list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)
    assert params == ["self", "inputs", "prompts", "completions", "completion_ids_list"]


class _Spy:
    """A reward function that records what TRL passes to reward functions."""

    __name__ = "spy"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if k not in ("trainer_state", "log_extra", "log_metric")})
        return [0.0] * len(completions)


def test_synthesis_steps_groups_and_label_leak_guard(tmp_path, tiny_model_path):
    """Two real steps with the synthesis anchor (frozen copy): every group's reference comes from exactly its G
    completions, `cat_reference` reaches the rewards, and the gold column does not."""
    spy = _Spy()
    trainer = CaTGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=[CaTMathReward(), spy],
        args=_config(tmp_path, max_steps=2),
        train_dataset=_dataset(),
    )
    assert trainer.cat_anchor_source == "copy"
    trainer.train()
    assert trainer.state.global_step == 2

    # Label-leak guard: the dataset has gold answers, yet no reward function ever received them.
    assert "gold_answer" in trainer.train_dataset.column_names
    assert spy.calls and all("gold_answer" not in call for call in spy.calls)
    assert all("cat_reference" in call for call in spy.calls)

    rows = _rows(trainer)
    assert len(rows) == 4  # 2 steps x 2 prompts
    template = trainer.args.synthesis_template
    for row in rows:
        assert len(row["completions"]) == 4
        # The anchor saw exactly this group's completions, numbered, and not the question.
        assert row["anchor_prompt"] == build_synthesis_prompt(template, row["completions"])
        assert row["prompt"] not in row["anchor_prompt"]
    # Each call's cat_reference is constant within a group of G and matches the logged reference.
    for call in spy.calls:
        refs = call["cat_reference"]
        assert all(refs[i] == refs[i - i % 4] for i in range(len(refs)))
    logged = {r["reference"] for r in rows}
    assert {ref for call in spy.calls for ref in call["cat_reference"]} <= logged

    metrics = [h for h in trainer.state.log_history if "cat/anchor_seconds" in h]
    assert len(metrics) == 2
    for h in metrics:
        assert h["cat/anchor_seconds"] > 0
        assert 0 <= h["cat/truncation_rate"] <= 1
        assert "cat/label_accuracy" in h  # gold diagnostics are computed (outside the reward path)
    # syntheses without the `# UNIFIED RESPONSE` heading are counted, not silently used whole
    expected = [sum("# UNIFIED RESPONSE" not in row["anchor_output"] for row in rows[2 * k:2 * k + 2]) / 2
                for k in range(2)]
    assert [h["cat/reference_format_failure"] for h in metrics] == expected


def test_gold_values_do_not_change_training_rewards(tmp_path, embedded_model_path):
    """Same seed, same data, gold column correct vs. scrambled: identical rewards. The embedded model boxes answers
    with a worked example in the prompt, so these rewards are real 0/1 values, not all-None."""
    results = []
    for scramble in (False, True):
        ds = _dataset(4, fewshot=1)
        if scramble:
            ds = ds.map(lambda r: {"gold_answer": str(int(r["gold_answer"]) + 17)})
        trainer = CaTGRPOTrainer(
            model=embedded_model_path,
            args=_config(tmp_path / str(scramble), cat_estimator="majority", max_completion_length=32,
                         learning_rate=1e-6, model_init_kwargs={"dtype": torch.float32}),
            train_dataset=ds,
        )
        trainer.train()
        rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
        label_acc = [h.get("cat/ground_truth_ratio") for h in trainer.state.log_history if "reward" in h]
        results.append((rewards, label_acc, [r["rewards"] for r in _rows(trainer)]))
    (rewards_a, acc_a, rows_a), (rewards_b, acc_b, rows_b) = results
    assert rows_a == rows_b and rewards_a == rewards_b
    # ...while the diagnostics, which do read gold, do see the difference (gold+17 is never a rollout's answer).
    assert acc_b == [0.0]
    assert any(r is not None and r > 0 for row in rows_a for r in row), "expected some non-zero reward"


def test_real_reward_signal_updates_policy(tmp_path, embedded_model_path):
    """Majority references on the embedded model give mixed 0/1 rewards, so GRPO takes a non-zero step."""
    trainer = CaTGRPOTrainer(
        model=embedded_model_path,
        args=_config(tmp_path, cat_estimator="majority", max_completion_length=32, learning_rate=1e-5,
                     model_init_kwargs={"dtype": torch.float32}),
        train_dataset=_dataset(4, fewshot=1),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    log = next(h for h in trainer.state.log_history if "reward" in h)
    assert log["frac_reward_zero_std"] < 1.0, "every group had constant rewards: no signal to test with"
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed > 0


def _greedy(engine: TransformersEngine, text: str) -> str:
    return engine.generate([[{"role": "user", "content": text}]], SamplingSettings(max_new_tokens=12, temperature=0))[0].text


def test_peft_base_anchor_is_initial_policy_without_extra_weights(tmp_path, tiny_model_path):
    from peft import LoraConfig

    trainer = CaTGRPOTrainer(
        model=tiny_model_path,
        args=_config(tmp_path, learning_rate=5e-2),
        train_dataset=_dataset(),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    assert trainer.cat_anchor_source == "peft_base"
    with trainer.cat_engine._model() as anchor_model:
        assert anchor_model is trainer.accelerator.unwrap_model(trainer.model)  # the policy's own weights
    trainer.train()
    reference = TransformersEngine.from_pretrained(tiny_model_path, dtype=torch.float32)
    prompt = "Add 2 and 3."
    assert _greedy(trainer.cat_engine, prompt) == _greedy(reference, prompt)
    # ...and the adapter is active again for the policy afterwards (it differs from pi_0).
    policy = TransformersEngine(trainer.accelerator.unwrap_model(trainer.model), reference.tokenizer)
    assert _greedy(policy, prompt) != _greedy(reference, prompt)


def test_ref_model_anchor_reuses_trl_reference_model(tmp_path, tiny_model_path):
    trainer = CaTGRPOTrainer(
        model=tiny_model_path, args=_config(tmp_path, beta=0.04, cat_anchor_seed=7), train_dataset=_dataset()
    )
    assert trainer.cat_anchor_source == "ref_model"
    with trainer.cat_engine._model() as anchor_model:
        assert anchor_model is trainer.accelerator.unwrap_model(trainer.ref_model)
    assert trainer.cat_estimator.sampling.seed is None
    trainer.train()
    assert trainer.state.global_step == 1
    assert trainer.cat_estimator.sampling.seed == 7  # cat_anchor_seed + 100003 * step(0) + rank(0)


def test_ref_model_anchor_refused_with_sync_ref_model(tmp_path):
    with pytest.raises(ValueError, match="sync_ref_model"):
        _config(tmp_path, beta=0.04, sync_ref_model=True, cat_anchor_weights="ref_model")


def test_auto_anchor_avoids_synced_reference_model(tmp_path, tiny_model_path):
    trainer = CaTGRPOTrainer(
        model=tiny_model_path,
        args=_config(tmp_path, beta=0.04, sync_ref_model=True, ref_model_sync_steps=1),
        train_dataset=_dataset(),
    )
    assert trainer.cat_anchor_source == "copy"


def test_copy_anchor_holds_initial_weights(tmp_path, tiny_model_path):
    trainer = CaTGRPOTrainer(model=tiny_model_path, args=_config(tmp_path), train_dataset=_dataset())
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with trainer.cat_engine._model() as anchor_model:
        assert anchor_model is not trainer.accelerator.unwrap_model(trainer.model)
        assert not any(p.requires_grad for p in anchor_model.parameters())
        for (n, p), (_, q) in zip(anchor_model.named_parameters(), initial.named_parameters()):
            assert torch.equal(p, q), n


def test_vanilla_grpo_trainer_with_self_contained_reward(tmp_path, tiny_model_path):
    """Plain TRL users: `GRPOTrainer` + `CaTSynthesisMathReward` (groups and anchor handled inside the reward)."""
    from trl import GRPOConfig

    from cat_trl.rewards import CaTSynthesisMathReward

    engine = TransformersEngine.from_pretrained(tiny_model_path, dtype=torch.float32)
    reward = CaTSynthesisMathReward(4, engine, anchor_max_new_tokens=8)
    calls = []
    original = engine.generate

    def counting_generate(conversations, sampling, chat_template_kwargs=None):
        calls.append(len(conversations))
        return original(conversations, sampling, chat_template_kwargs)

    engine.generate = counting_generate
    args = GRPOConfig(
        output_dir=str(tmp_path / "vanilla"), use_cpu=True, bf16=False, num_generations=4,
        per_device_train_batch_size=8, max_completion_length=8, max_steps=1, activation_checkpointing=False,
        report_to=[], save_strategy="no", log_completions=True, logging_steps=1,
    )
    trainer = GRPOTrainer(model=tiny_model_path, reward_funcs=[reward], args=args, train_dataset=_dataset())
    trainer.train()
    assert calls == [2]  # one engine call for both groups of the step
    frames = list((tmp_path / "vanilla" / "completions").glob("*.parquet"))
    import pandas as pd

    frame = pd.read_parquet(frames[0])
    assert "cat_reference_answer" in frame.columns and len(frame) == 8


def test_default_tokenizer_pad_and_chat_template(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    assert tok.pad_token_id is not None and tok.chat_template


def test_plain_trl_example_runs(tmp_path, tiny_model_path, repo_root):
    """The README's plain-TRL example, on the tiny model."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "plain_trl.py"), "--model", tiny_model_path,
         "--max_steps", "1", "--output_dir", str(tmp_path / "plain")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CaT reward per step:" in proc.stdout
    assert list((tmp_path / "plain" / "completions").glob("*.parquet"))


def test_pretrained_adapter_is_part_of_the_anchor_even_with_beta_zero(tmp_path, tiny_model_path):
    """A `PeftModel` passed in carries a trained adapter: pi_0 is base + adapter, so the anchor must not be the bare
    base. TRL keeps a frozen copy only when beta > 0; CaT adds it at beta == 0."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    initial = TransformersEngine(model, AutoTokenizer.from_pretrained(tiny_model_path))
    prompt = "Add 2 and 3."
    initial_text = _greedy(initial, prompt)
    with model.disable_adapter():
        bare_text = _greedy(initial, prompt)
    assert initial_text != bare_text  # the adapter matters, so the check below can fail

    trainer = CaTGRPOTrainer(model=model, args=_config(tmp_path, learning_rate=5e-2), train_dataset=_dataset())
    assert trainer.cat_anchor_source == "peft_base"
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert "ref" in unwrapped.peft_config
    assert not any(p.requires_grad for n, p in unwrapped.named_parameters() if ".ref." in n)
    trainer.train()
    assert _greedy(trainer.cat_engine, prompt) == initial_text


def test_loader_gold_column_is_hidden_even_when_cat_gold_column_is_renamed(tmp_path, tiny_model_path):
    spy = _Spy()
    dataset = _dataset().map(lambda r: {"label": r["gold_answer"]})
    trainer = CaTGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=[CaTMathReward(), spy],
        args=_config(tmp_path, cat_gold_column="label", cat_estimator="majority"),
        train_dataset=dataset,
    )
    trainer.train()
    assert spy.calls and all("gold_answer" not in c and "label" not in c for c in spy.calls)


def test_resume_forgets_group_rows_written_after_the_checkpoint(tmp_path):
    from cat_trl.callbacks import GroupLog

    path = tmp_path / "cat_groups.jsonl"
    path.write_text("".join(json.dumps({"step": s, "group": 0}) + "\n" for s in (0, 1, 2, 3)) + '{"step": 4, "gr')
    GroupLog(str(tmp_path)).drop_after(2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("estimator", ["self_bon", "min_ppl", "mutual_predictability"])
def test_selection_estimators_as_rl_references(tmp_path, tiny_model_path, estimator):
    """The paper's "RL with selection-based references": the anchor picks one of the G rollouts and that rollout is
    the reference every reward scores against (a real TRL step)."""
    spy = _Spy()
    trainer = CaTGRPOTrainer(
        model=tiny_model_path,
        reward_funcs=[CaTMathReward(), spy],
        args=_config(tmp_path, cat_estimator=estimator),
        train_dataset=_dataset(),
    )
    if estimator == "self_bon":  # the tiny random model never writes a verdict: the real call's reply gets one
        from dataclasses import replace as _replace

        engine = trainer.cat_estimator.engine
        real = engine.generate
        # a finished verdict line (a reply cut off by the token limit is read only up to its last full line)
        engine.generate = lambda *a, **k: [_replace(g, text=g.text + "\nBEST: 2\n") for g in real(*a, **k)]
    trainer.train()
    assert trainer.state.global_step == 1
    rows = _rows(trainer)
    assert len(rows) == 2
    refs = spy.calls[0]["cat_reference"]
    for row in rows:  # every group got a selection, and it is one of this group's own rollouts
        assert row["reference"] is not None and row["reference"] in row["completions"]
        if estimator == "self_bon":
            assert row["reference"] == row["completions"][1]
    assert sorted(refs, key=str) == sorted((row["reference"] for row in rows for _ in row["completions"]), key=str)


def test_group_log_stores_the_anchor_prompt_once_and_restores_it(tmp_path):
    """Rows keep the template's hash (template written once), the rollouts only when the anchor saw them truncated,
    and the prompt's sha256; `read_group_rows` restores the exact prompt and refuses one that does not match."""
    import hashlib

    from cat_trl.callbacks import GroupLog, read_group_rows
    from cat_trl.estimators.prompts import MATH_SYNTHESIS_PROMPT

    completions = ["first \\boxed{1}", "second " * 400 + "\\boxed{2}"]
    seen = [completions[0], "second second [...]"]  # as if water-filling had cut the second rollout
    rows = []
    for g, rollouts in enumerate((completions, seen)):
        prompt = build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, rollouts)
        rows.append({"step": 0, "group": g, "prompt": "Q?", "completions": completions,
                     "_anchor": (MATH_SYNTHESIS_PROMPT, rollouts, False, hashlib.sha256(prompt.encode()).hexdigest())})
    GroupLog(str(tmp_path)).append(rows)
    stored = [json.loads(line) for line in (tmp_path / "cat_groups.jsonl").read_text().splitlines()]
    assert all("anchor_prompt" not in r and MATH_SYNTHESIS_PROMPT[:40] not in json.dumps(r) for r in stored)
    assert "anchor_rollouts" not in stored[0] and stored[1]["anchor_rollouts"] == seen
    restored = read_group_rows(str(tmp_path))
    assert restored[0]["anchor_prompt"] == build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, completions)
    assert restored[1]["anchor_prompt"] == build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, seen)
    stored[1]["anchor_rollouts"] = completions  # a tampered row no longer matches its recorded prompt
    (tmp_path / "cat_groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stored))
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        read_group_rows(str(tmp_path))
