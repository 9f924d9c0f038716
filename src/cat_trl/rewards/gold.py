"""The ORACLE reward of a learning comparison: 1 if a rollout's final answer matches the *true* label.

This is GRPO with ground truth, the upper bound CaT is compared against. It reads `gold_answer`, so it is never used
by `CaTGRPOTrainer` (which strips that column before any reward is called): `cat-trl compare` runs its `gold` arm
with TRL's plain `GRPOTrainer`, the only place where labels reach a reward.
"""

from __future__ import annotations

from typing import Any

from ..answers import AnswerMatcher, get_extractor
from ..data.labels import GOLD_COLUMN
from ..messages import completion_text


class GoldAnswerReward:
    """R(o) = 1 if the rollout's final answer matches `gold_answer`, else 0 (None where a row has no label).

    Args:
        match (`str`): `string` or `equivalent`, as `CaTMathReward`.
        timeout (`float`): math-verify timeout per comparison.
        extraction (`str`): `boxed` or `boxed_or_final`.
    """

    __name__ = "gold_answer_reward"

    def __init__(self, match: str = "string", timeout: float | None = 5.0, extraction: str = "boxed"):
        self.matcher = AnswerMatcher(match, timeout)
        self.extract = get_extractor(extraction)

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float | None]:
        golds = kwargs.get(GOLD_COLUMN)
        if golds is None:
            raise ValueError(f"gold_answer_reward needs the `{GOLD_COLUMN}` column (the oracle arm reads labels)")
        rewards: list[float | None] = []
        for completion, gold in zip(completions, golds):
            if gold is None or str(gold).strip() == "":
                rewards.append(None)
                continue
            answer = self.extract(completion_text(completion))
            rewards.append(1.0 if answer is not None and self.matcher.match(answer, str(gold)) else 0.0)
        return rewards
