"""Open-ended rewards: the CaT rubric reward and the paper's two baselines.

* `CaTRubricReward` -- fraction of the anchor's self-proposed criteria that the judge says a rollout satisfies
  (optionally scaled), with HealthBench's length penalty as a knob.
* `JudgeEquivalenceReward` -- "model-as-judge": 1 if the judge finds the rollout semantically equivalent to the
  synthesized reference, else 0.
* `PhysicianRubricReward` -- the *oracle* baseline: HealthBench's physician rubric items, scored like the benchmark
  (points met / positive points). It reads labels, so the trainer only lets it see them when asked explicitly.

All are synchronous callables (the judge engine parallelises HTTP requests itself); each judges every
(rollout, criterion) pair of its call in ONE judge call. Malformed judge output never raises: it counts as "no".
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..data.labels import GOLD_RUBRICS_COLUMN
from ..messages import completion_text
from ..rubrics.judge import Judge, JudgeItem
from ..rubrics.prompts import EQUIVALENCE_PROMPT



def _conversation(prompt: Any) -> Any:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _log(log_metric, name: str, value: float) -> None:
    if log_metric is not None:
        log_metric(name, float(value))


class _LengthPenalty:
    """Reward `penalty` (the paper: -1) for completions longer than `max_tokens` tokens (the paper: 750 of 1024).
    Penalised completions are not judged at all -- their reward does not depend on the verdicts."""

    def __init__(self, max_tokens: int | None, penalty: float):
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"length penalty threshold must be >= 1 token, got {max_tokens}")
        self.max_tokens, self.penalty = max_tokens, penalty

    def over(self, completion_ids: list | None, n: int) -> list[bool]:
        if self.max_tokens is None or completion_ids is None:
            return [False] * n
        return [len(ids) > self.max_tokens for ids in completion_ids]


def _judge_rows(judge: Judge, prompts: list[Any], texts: list[str], criteria: list[list[str] | None],
                over: list[bool]) -> tuple[dict[int, list], list]:
    """The one judging loop of every judged reward: each row's criteria against its text, all pairs of the call in
    ONE judge call. Rows that are over the length limit or have no criteria (None) are not judged. Returns (verdicts
    per judged row, all verdicts)."""
    items, owners = [], []
    for i, (prompt, text, row) in enumerate(zip(prompts, texts, criteria)):
        if over[i] or row is None:
            continue
        for criterion in row:
            items.append(JudgeItem(_conversation(prompt), text, criterion))
            owners.append(i)
    verdicts = judge.judge(items)
    per_row: dict[int, list] = {i: [] for i, row in enumerate(criteria) if not over[i] and row is not None}
    for owner, verdict in zip(owners, verdicts):
        per_row[owner].append(verdict)
    return per_row, verdicts


class _JudgedReward:
    """Shared by the judged rewards: length penalty first (penalised rollouts are not judged), then `_judge_rows`,
    then `score` per judged row. Rows without criteria stay None (unscorable, not zero)."""

    def __init__(self, judge: Judge, length_penalty_tokens: int | None = None, length_penalty: float = -1.0):
        self.judge = judge
        self.length = _LengthPenalty(length_penalty_tokens, length_penalty)

    def _criteria(self, prompts, kwargs) -> list[list | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, i: int, verdicts: list) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rewards(self, prompts, completions, completion_ids, log_metric, kwargs) -> tuple[list, list]:
        criteria = self._criteria(prompts, kwargs)
        texts = [completion_text(c) for c in completions]
        over = self.length.over(completion_ids, len(texts))
        start = time.perf_counter()
        per_row, verdicts = _judge_rows(self.judge, prompts, texts, criteria, over)
        rewards: list[float | None] = [self.length.penalty if o else None for o in over]
        for i, row in per_row.items():
            if row or criteria[i] == []:
                rewards[i] = self._score(i, row)
        _log(log_metric, "cat/judge_seconds", time.perf_counter() - start)
        _log(log_metric, "cat/judge_calls", len(verdicts))
        if verdicts:
            _log(log_metric, "cat/judge_parse_failure", sum(not v.parsed for v in verdicts) / len(verdicts))
        if self.length.max_tokens is not None:
            _log(log_metric, "cat/length_penalty_rate", sum(over) / max(len(over), 1))
        return rewards, verdicts


class CaTRubricReward(_JudgedReward):
    """R(o) = scale * (criteria of the group's rubric the judge marks satisfied) / (criteria).

    Reads `cat_rubric` (one list of criteria per completion, shared within a group; None when the anchor's rubric
    failed -- the reward is then None). Used by `CaTGRPOTrainer` with `cat_reward: rubric`.

    Args:
        judge (`Judge`): checks one criterion against one rollout (yes/no or p(yes)).
        scale (`float`): multiplies the fraction (TRL's `reward_weights` does the same from a config).
        length_penalty_tokens (`int`, *optional*): rollouts longer than this get `length_penalty`, unjudged.
        length_penalty (`float`): the paper's -1.

    Returns (from `__call__`): one reward per completion, None where the group has no usable rubric.

    Example:

        >>> from cat_trl.rewards import CaTRubricReward
        >>> from cat_trl.rubrics import Judge
        >>> reward = CaTRubricReward(Judge(judge_engine, "generate"), length_penalty_tokens=750)
        >>> reward(prompts, completions, cat_rubric=[["Mentions red flags", "Advises a doctor"]] * len(completions))
    """

    __name__ = "cat_rubric_reward"

    def __init__(self, judge: Judge, scale: float = 1.0, length_penalty_tokens: int | None = None,
                 length_penalty: float = -1.0):
        super().__init__(judge, length_penalty_tokens, length_penalty)
        self.scale = scale

    def _criteria(self, prompts, kwargs):
        rubrics = kwargs.get("cat_rubric")
        if rubrics is None:
            raise ValueError(
                "cat_rubric_reward needs `cat_rubric` (the anchor's rubric per completion): use CaTGRPOTrainer with "
                "cat_reward: rubric, or add a cat_rubric column."
            )
        rubrics = [json.loads(r) if isinstance(r, str) else r for r in rubrics]  # a JSON column
        return [list(r) if r else None for r in rubrics]  # no usable rubric: unscorable, not zero

    def _score(self, i, verdicts):
        return self.scale * sum(v.met for v in verdicts) / len(verdicts)

    def __call__(self, prompts: list[Any], completions: list[Any], cat_rubric: list | None = None,
                 completion_ids: list | None = None, log_metric=None, **kwargs: Any) -> list[float | None]:
        rewards, verdicts = self._rewards(prompts, completions, completion_ids, log_metric,
                                          {**kwargs, "cat_rubric": cat_rubric})
        if verdicts:
            _log(log_metric, "cat/criteria_satisfied", sum(v.met for v in verdicts) / len(verdicts))
        return rewards


class JudgeEquivalenceReward(_JudgedReward):
    """Model-as-judge baseline: 1 if the judge says the rollout is semantically equivalent to `cat_reference`."""

    __name__ = "judge_equivalence_reward"

    @classmethod
    def from_engine(cls, engine, mode: str = "generate", **kwargs) -> JudgeEquivalenceReward:
        return cls(Judge(engine, mode, template=EQUIVALENCE_PROMPT), **kwargs)

    def _criteria(self, prompts, kwargs):
        references = kwargs.get("cat_reference")
        if references is None:
            raise ValueError("judge_equivalence_reward needs `cat_reference` (use CaTGRPOTrainer)")
        return [[ref] if ref else None for ref in references]

    def _score(self, i, verdicts):
        return float(verdicts[0].met)

    def __call__(self, prompts: list[Any], completions: list[Any], cat_reference: list | None = None,
                 completion_ids: list | None = None, log_metric=None, **kwargs: Any) -> list[float | None]:
        return self._rewards(prompts, completions, completion_ids, log_metric,
                             {**kwargs, "cat_reference": cat_reference})[0]


class PhysicianRubricReward(_JudgedReward):
    """Oracle baseline: the HealthBench score of each rollout under its physician rubric (`gold_rubrics` column:
    a JSON list of `{criterion, points, tags}`), judged item by item with the same judge. Negative-points items are
    judged for the presence of the undesirable behaviour they describe and subtract their points."""

    __name__ = "physician_rubric_reward"

    def _criteria(self, prompts, kwargs):
        from ..rubrics.healthbench_grader import RubricItem

        column = kwargs.get(GOLD_RUBRICS_COLUMN)
        if column is None:
            raise ValueError(
                f"physician_rubric_reward needs the `{GOLD_RUBRICS_COLUMN}` column. CaTGRPOTrainer hides labels from "
                "rewards; this oracle baseline must be enabled explicitly with cat_reward: physician_rubric."
            )
        self._rubrics = [[RubricItem.from_dict(d) for d in (json.loads(raw) if isinstance(raw, str) else raw)]
                         for raw in column]
        return [[item.criterion for item in rubric] for rubric in self._rubrics]

    def _score(self, i, verdicts):
        from ..rubrics.healthbench_grader import example_score

        return example_score(self._rubrics[i], [v.met for v in verdicts])

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list | None = None,
                 log_metric=None, **kwargs: Any) -> list[float | None]:
        return self._rewards(prompts, completions, completion_ids, log_metric, kwargs)[0]


class AsyncCaTRubricReward(CaTRubricReward):
    """`CaTRubricReward` as an `async` reward function: TRL awaits it on its reward event-loop thread together with
    any other async rewards, so HTTP judging overlaps with them. The judge's blocking engine call runs in a worker
    thread (`asyncio.to_thread`); it must not need the main thread (true of `OpenAIEngine`; a local in-process judge
    should use the synchronous class)."""

    __name__ = "cat_rubric_reward"

    async def __call__(self, prompts, completions, **kwargs):  # type: ignore[override]
        import asyncio
        import threading

        self.last_thread = threading.current_thread().name
        return await asyncio.to_thread(super().__call__, prompts, completions, **kwargs)
