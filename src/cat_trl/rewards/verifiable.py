"""The verifiable CaT reward: 1 if a rollout's final `\\boxed{}` answer matches the reference's, else 0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..answers import AnswerMatcher, get_extractor
from ..messages import completion_text


class CaTMathReward:
    """Scores completions against the `cat_reference` column (one reference text per completion).

    Plain TRL users get `cat_reference` from `CaTGRPOTrainer` (which fills it from the anchor) or from any dataset
    or `rollout_func` that provides it. The reference's answer is its last `\\boxed{}`; it is parsed once per
    distinct reference, i.e. once per group. A reference with no extractable answer gives its whole group `None`
    (TRL then gives those completions zero advantage) and is counted in `cat/reward_unparseable_reference`.

    Gold answers are never read: only `completions` and `cat_reference` enter the score.

    Args:
        match (`str`): `"string"` (normalised string equality, the paper's choice) or `"equivalent"` (symmetric
            math-verify).
        timeout (`float`, *optional*): per-comparison math-verify timeout in seconds (`equivalent` mode).
        extraction (`str`): `"boxed"` (the paper's) or `"boxed_or_final"` (fall back to "final answer is ...").

    Returns (from `__call__(completions, cat_reference, ...)`):
        `list[float | None]`: 1.0 / 0.0 per completion; None for every completion whose reference has no answer.

    Example:

    ```python
    >>> from cat_trl.rewards import CaTMathReward
    >>> reward = CaTMathReward()
    >>> reward(["so \\\\boxed{4}", "I get \\\\boxed{5}", "no idea"], cat_reference=["# UNIFIED: \\\\boxed{4}"] * 3)
    [1.0, 0.0, 0.0]
    >>> reward(["\\\\boxed{4}"], cat_reference=["the anchor wrote no answer"])
    [None]

    ```
    """

    __name__ = "cat_math_reward"

    def __init__(self, match: str = "string", timeout: float | None = 5.0, extraction: str = "boxed"):
        self.matcher = AnswerMatcher(match, timeout)
        self.extraction = extraction
        self.extract = get_extractor(extraction)

    def __call__(
        self,
        completions: list[Any],
        cat_reference: list[str | None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if cat_reference is None:
            raise ValueError(
                "cat_math_reward needs a `cat_reference` column (one reference per completion). Train with "
                "cat_trl.CaTGRPOTrainer, or use cat_trl.rewards.CaTSynthesisMathReward, which builds references itself."
            )
        if len(cat_reference) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(cat_reference)} references")
        reference_answers: dict[str | None, str | None] = {}
        rewards: list[float | None] = []
        for completion, reference in zip(completions, cat_reference):
            if reference not in reference_answers:
                reference_answers[reference] = self.extract(reference) if isinstance(reference, str) else None
            target = reference_answers[reference]
            if target is None:
                rewards.append(None)
                continue
            answer = self.extract(completion_text(completion))
            rewards.append(1.0 if answer is not None and self.matcher.match(answer, target) else 0.0)
        if log_metric is not None and rewards:
            log_metric("cat/reward_unparseable_reference", sum(r is None for r in rewards) / len(rewards))
        return rewards
