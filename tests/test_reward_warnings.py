"""A group without a usable reference is CaT's designed outcome, not a user error: real TRL steps on the tiny model
check that TRL's "All reward functions returned None" warning (which dumps the whole row) is replaced by one line in
cat-trl's words, and that TRL's warning still reaches the user when their own reward returns None for a row whose
group HAD a reference."""

from __future__ import annotations

import logging

from cat_trl.config import CaTGRPOConfig
from cat_trl.data import load_synthetic_math
from cat_trl.estimators.base import Reference, ReferenceEstimator
from cat_trl.trainer import CaTGRPOTrainer
from cat_trl.trl_compat import TRL_ALL_REWARDS_NONE_WARNING

NO_REFERENCE_LINE = "group(s) had no usable reference this step; their rollouts get no reward"


class _Alternating(ReferenceEstimator):
    """Group 0, 2, ... get a reference with an answer, the others none (or the reverse with `first_missing`)."""

    name = "alternating"

    def __init__(self, first_missing: bool = False):
        self.first_missing = first_missing

    def estimate(self, groups):
        refs = []
        for g, _ in enumerate(groups):
            if (g % 2 == 0) != self.first_missing:
                refs.append(Reference(text="so \\boxed{4}", answer="4"))
            else:
                refs.append(Reference(text="the anchor wrote no answer", answer=None))
        return refs


def _always_none(completions, **kwargs):
    """A user's reward that never scores: every row it sees is its own None, reference or not."""
    return [None] * len(completions)


def _train(model, tmp_path, caplog, estimator, reward_funcs=None, max_steps=2):
    args = CaTGRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, num_generations=4, per_device_train_batch_size=8,
        max_completion_length=8, max_steps=max_steps, activation_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to=[], learning_rate=1e-3, seed=0, cat_anchor_max_new_tokens=8,
    )
    dataset = load_synthetic_math(16, seed=0, max_steps=1, instruction="Put your final answer within \\boxed{}.")
    caplog.set_level(logging.INFO, logger="cat_trl")  # TRL's warning propagates to the root at WARNING
    trainer = CaTGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                             estimator=estimator)
    trainer.train()
    assert trainer.state.global_step == max_steps
    return trainer


def _messages(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


def test_groups_without_reference_get_one_line_not_trls_row_dump(tmp_path, caplog, tiny_model_path):
    # the default CaT math reward: None for the reference-less group's rollouts
    _train(tiny_model_path, tmp_path, caplog, _Alternating())
    assert not _messages(caplog, TRL_ALL_REWARDS_NONE_WARNING)
    lines = _messages(caplog, NO_REFERENCE_LINE)
    assert len(lines) == 2  # one per step: a warning the first time, then info
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    for record in lines:
        message = record.getMessage()
        assert "\n" not in message and "cat/reference_parse_failure" in message
        assert message.startswith("cat-trl: 1 of 2 group(s)")


def test_a_users_none_on_a_row_with_reference_keeps_trls_warning(tmp_path, caplog, tiny_model_path):
    _train(tiny_model_path, tmp_path, caplog, _Alternating(), reward_funcs=[_always_none], max_steps=1)
    trl = _messages(caplog, TRL_ALL_REWARDS_NONE_WARNING)
    assert len(trl) == 1 and trl[0].name == "trl.trainer.grpo_trainer"
    assert "so \\\\boxed{4}" in trl[0].getMessage()  # TRL names the row: its group had the reference
    assert len(_messages(caplog, NO_REFERENCE_LINE)) == 1  # the other group: CaT's own outcome, said once


def test_trl_naming_a_reference_less_row_gives_way_to_a_line_about_the_rows_with_one(tmp_path, caplog,
                                                                                      tiny_model_path):
    # The first unscored row has no reference, so TRL's dump would blame CaT; the user's rows with a reference are
    # named in cat-trl's words instead.
    _train(tiny_model_path, tmp_path, caplog, _Alternating(first_missing=True), reward_funcs=[_always_none],
           max_steps=1)
    assert not _messages(caplog, TRL_ALL_REWARDS_NONE_WARNING)
    user = _messages(caplog, "every reward function returned None for 4 rollout(s) whose group had a usable")
    assert len(user) == 1 and user[0].levelno == logging.WARNING
    assert len(_messages(caplog, NO_REFERENCE_LINE)) == 1
