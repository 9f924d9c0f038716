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

from ..messages import completion_text
from ..rubrics.judge import Judge, JudgeItem
from ..rubrics.prompts import EQUIVALENCE_PROMPT

GOLD_RUBRICS_COLUMN = "gold_rubrics"


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


class CaTRubricReward:
    """R(o) = scale * (criteria of the group's rubric the judge marks satisfied) / (criteria).

    Reads `cat_rubric` (one list of criteria per completion, shared within a group; None when the anchor's rubric
    failed -- the reward is then None). Used by `CaTGRPOTrainer` with `cat_reward: rubric`.
    """

    __name__ = "cat_rubric_reward"

    def __init__(self, judge: Judge, scale: float = 1.0, length_penalty_tokens: int | None = None,
                 length_penalty: float = -1.0, soft: bool = False):
        self.judge, self.scale, self.soft = judge, scale, soft
        self.length = _LengthPenalty(length_penalty_tokens, length_penalty)

    def __call__(self, prompts: list[Any], completions: list[Any], cat_rubric: list | None = None,
                 completion_ids: list | None = None, log_metric=None, **kwargs: Any) -> list[float | None]:
        if cat_rubric is None:
            raise ValueError(
                "cat_rubric_reward needs `cat_rubric` (the anchor's rubric per completion): use CaTGRPOTrainer with "
                "cat_reward: rubric, or add a cat_rubric column."
            )
        texts = [completion_text(c) for c in completions]
        over = self.length.over(completion_ids, len(texts))
        rewards: list[float | None] = [None] * len(texts)
        items, owners = [], []
        for i, (prompt, text, rubric) in enumerate(zip(prompts, texts, cat_rubric)):
            if over[i]:
                rewards[i] = self.length.penalty
                continue
            if isinstance(rubric, str):  # a JSON column
                rubric = json.loads(rubric)
            if not rubric:
                continue  # no usable rubric for this group: unscorable, not zero
            for criterion in rubric:
                items.append(JudgeItem(_conversation(prompt), text, criterion))
                owners.append(i)
        start = time.perf_counter()
        verdicts = self.judge.judge(items)
        met: dict[int, list[float]] = {}
        for owner, verdict in zip(owners, verdicts):
            met.setdefault(owner, []).append(verdict.score if self.soft else float(verdict.met))
        for i, values in met.items():
            rewards[i] = self.scale * sum(values) / len(values)
        _log(log_metric, "cat/judge_seconds", time.perf_counter() - start)
        _log(log_metric, "cat/judge_calls", len(items))
        if items:
            _log(log_metric, "cat/judge_parse_failure", sum(not v.parsed for v in verdicts) / len(verdicts))
            _log(log_metric, "cat/criteria_satisfied", sum(v.met for v in verdicts) / len(verdicts))
        if self.length.max_tokens is not None:
            _log(log_metric, "cat/length_penalty_rate", sum(over) / max(len(over), 1))
        return rewards


class JudgeEquivalenceReward:
    """Model-as-judge baseline: 1 if the judge says the rollout is semantically equivalent to `cat_reference`."""

    __name__ = "judge_equivalence_reward"

    def __init__(self, judge: Judge, length_penalty_tokens: int | None = None, length_penalty: float = -1.0):
        self.judge = judge
        self.length = _LengthPenalty(length_penalty_tokens, length_penalty)

    @classmethod
    def from_engine(cls, engine, mode: str = "generate", **kwargs) -> JudgeEquivalenceReward:
        return cls(Judge(engine, mode, template=EQUIVALENCE_PROMPT), **kwargs)

    def __call__(self, prompts: list[Any], completions: list[Any], cat_reference: list | None = None,
                 completion_ids: list | None = None, log_metric=None, **kwargs: Any) -> list[float | None]:
        if cat_reference is None:
            raise ValueError("judge_equivalence_reward needs `cat_reference` (use CaTGRPOTrainer)")
        texts = [completion_text(c) for c in completions]
        over = self.length.over(completion_ids, len(texts))
        rewards: list[float | None] = [None] * len(texts)
        items, owners = [], []
        for i, (prompt, text, ref) in enumerate(zip(prompts, texts, cat_reference)):
            if over[i]:
                rewards[i] = self.length.penalty
            elif ref:
                items.append(JudgeItem(_conversation(prompt), text, ref))
                owners.append(i)
        verdicts = self.judge.judge(items)
        for i, verdict in zip(owners, verdicts):
            rewards[i] = float(verdict.met)
        if items:
            _log(log_metric, "cat/judge_parse_failure", sum(not v.parsed for v in verdicts) / len(verdicts))
        return rewards


class PhysicianRubricReward:
    """Oracle baseline: the HealthBench score of each rollout under its physician rubric (`gold_rubrics` column:
    a JSON list of `{criterion, points, tags}`), judged item by item with the same judge. Negative-points items are
    judged for the presence of the undesirable behaviour they describe and subtract their points."""

    __name__ = "physician_rubric_reward"

    def __init__(self, judge: Judge, length_penalty_tokens: int | None = None, length_penalty: float = -1.0):
        self.judge = judge
        self.length = _LengthPenalty(length_penalty_tokens, length_penalty)

    def __call__(self, prompts: list[Any], completions: list[Any], completion_ids: list | None = None,
                 log_metric=None, **kwargs: Any) -> list[float | None]:
        from ..evaluation.healthbench_grader import RubricItem, example_score

        column = kwargs.get(GOLD_RUBRICS_COLUMN)
        if column is None:
            raise ValueError(
                f"physician_rubric_reward needs the `{GOLD_RUBRICS_COLUMN}` column. CaTGRPOTrainer hides labels from "
                "rewards; this oracle baseline must be enabled explicitly with cat_reward: physician_rubric."
            )
        texts = [completion_text(c) for c in completions]
        over = self.length.over(completion_ids, len(texts))
        rewards: list[float | None] = [None] * len(texts)
        rubrics, items, owners = {}, [], []
        for i, (prompt, text, raw) in enumerate(zip(prompts, texts, column)):
            if over[i]:
                rewards[i] = self.length.penalty
                continue
            rubric = [RubricItem.from_dict(d) for d in (json.loads(raw) if isinstance(raw, str) else raw)]
            rubrics[i] = rubric
            for item in rubric:
                items.append(JudgeItem(_conversation(prompt), text, item.criterion))
                owners.append(i)
        verdicts = self.judge.judge(items)
        met: dict[int, list[bool]] = {i: [] for i in rubrics}
        for owner, verdict in zip(owners, verdicts):
            met[owner].append(verdict.met)
        for i, rubric in rubrics.items():
            rewards[i] = example_score(rubric, met[i])
        if items:
            _log(log_metric, "cat/judge_parse_failure", sum(not v.parsed for v in verdicts) / len(verdicts))
        return rewards


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
