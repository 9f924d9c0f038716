"""Held-out evaluation of a policy during and after training: greedy accuracy and sampled pass@1 on problems the
training never sees, with standard errors over problems.

The same evaluator scores every arm of a comparison at the same steps (same problems, same decoding, same seed), so
differences between arms are differences between policies. Scoring reads the gold answers: that is evaluation, not a
reward; the held-out rows are never part of a training set (`split_heldout` dedupes by question text).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from ..answers import AnswerMatcher
from ..engines.base import Engine, SamplingSettings
from ..engines.factory import live_policy_engine
from ..evaluation.testtime import mean_se


def split_heldout(rows: list[dict[str, Any]], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): `size` problems drawn with `seed` are held out, and every training row whose question
    text equals a held-out question is dropped too, so no held-out problem is ever trained on."""
    if not 0 < size < len(rows):
        raise ValueError(f"heldout_size={size} must be between 1 and the number of problems - 1 ({len(rows) - 1})")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = [rows[i] for i in sorted(order[:size])]
    held_questions = {_key(r) for r in held}
    train = [rows[i] for i in sorted(order[size:]) if _key(rows[i]) not in held_questions]
    return train, held


def _key(row: dict[str, Any]) -> str:
    from ..messages import question_text

    return " ".join(str(row.get("question") or question_text(row["prompt"])).split()).lower()


@dataclass(frozen=True)
class HeldOutSettings:
    """How a held-out point is scored: greedy decoding, plus `k` samples per problem for pass@1."""

    k: int = 4
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    chat_template_kwargs: dict | None = None


class HeldOutEvaluator:
    """Scores a policy engine on held-out rows (`prompt` messages + `gold_answer`).

    Returns (from `evaluate`): `greedy_accuracy`, `pass1` (mean over problems of the fraction of k samples that are
    right), their standard errors, `no_answer_rate` (greedy outputs without an extractable answer), `seconds`.
    """

    def __init__(self, rows: list[dict[str, Any]], matcher: AnswerMatcher, extract, settings: HeldOutSettings):
        if not rows:
            raise ValueError("held-out evaluation needs at least one problem")
        self.rows, self.matcher, self.extract, self.settings = rows, matcher, extract, settings

    def _correct(self, text: str, gold: str) -> tuple[bool, bool]:
        answer = self.extract(text)
        return answer is not None and self.matcher.match(answer, str(gold)), answer is None

    def evaluate(self, engine: Engine) -> dict[str, Any]:
        """Scores every held-out problem. Under DDP each rank scores its share (`rows[rank::world]`) and the
        per-problem results are gathered, so all ranks return the same numbers. A collective engine (a sharded
        policy: FSDP2 / ZeRO-3) is called on every rank, also a rank with no problem left, so that every forward pass
        has all ranks in it.

        Returns the aggregates of the seeded (in-distribution) split, `ood` with those of the out-of-distribution
        rows (`split: ood`) when there are any, and `problems`: one entry per held-out row, in row order (`index`),
        with its split, the greedy text, its extracted answer, whether it is right, and the pass@1 fraction -- what
        paired comparisons need."""
        from accelerate import PartialState

        from ..distributed import gather_all

        s = self.settings
        state = PartialState()
        start = time.perf_counter()
        collective = bool(getattr(engine, "collective", False))
        mine = list(range(state.process_index, len(self.rows), state.num_processes))
        conversations = [list(self.rows[i]["prompt"]) for i in mine]
        golds = [self.rows[i]["gold_answer"] for i in mine]
        greedy = engine.generate(conversations, SamplingSettings(max_new_tokens=s.max_new_tokens, temperature=0.0),
                                 s.chat_template_kwargs) if mine or collective else []
        answers = [self.extract(g.text) for g in greedy]
        correct = [a is not None and self.matcher.match(a, str(gold)) for a, gold in zip(answers, golds)]
        pass1: list[float | None] = [None] * len(mine)
        if s.k > 0 and (mine or collective):
            sampled = engine.generate(
                [c for c in conversations for _ in range(s.k)],
                SamplingSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 seed=s.seed),
                s.chat_template_kwargs,
            )
            pass1 = [sum(self._correct(g.text, gold)[0] for g in sampled[j * s.k : (j + 1) * s.k]) / s.k
                     for j, gold in enumerate(golds)]
        problems = sorted(gather_all([
            {"index": i, "split": self.rows[i].get("split", "in"), "greedy": g.text, "answer": a,
             "correct": bool(c), "pass1": p}
            for i, g, a, c, p in zip(mine, greedy, answers, correct, pass1)]), key=lambda r: r["index"])
        out: dict[str, Any] = self._aggregate([r for r in problems if r["split"] == "in"])
        ood = [r for r in problems if r["split"] == "ood"]
        if ood:
            out["ood"] = self._aggregate(ood)
        out["seconds"] = time.perf_counter() - start
        out["engine"] = getattr(engine, "name", type(engine).__name__)
        out["problems"] = problems
        return out

    def _aggregate(self, problems: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"n": len(problems)}
        out["greedy_accuracy"], out["greedy_accuracy_se"] = mean_se([float(r["correct"]) for r in problems])
        out["no_answer_rate"] = sum(r["answer"] is None for r in problems) / max(len(problems), 1)
        if self.settings.k > 0:
            out["pass1"], out["pass1_se"] = mean_se([r["pass1"] for r in problems])
        return out


class HeldOutEvalCallback(TrainerCallback):
    """Scores the policy on the held-out rows at the given global steps (0 = before the first update) and appends
    `{"step": s, **metrics}` to `records`. The model is put in eval mode for the evaluation and restored after."""

    def __init__(self, evaluator: HeldOutEvaluator, steps: list[int], tokenizer, records: list[dict],
                 batch_size: int | None = None, on_record=None, accelerator=None, engine_for=None):
        self.evaluator, self.steps, self.tokenizer = evaluator, sorted(set(steps)), tokenizer
        self.records, self.batch_size, self.on_record = records, batch_size, on_record
        #: the trainer's accelerator: a sharded policy is scored as a collective (`live_policy_engine`)
        self.accelerator = accelerator
        #: model -> the engine that scores it; None: a transformers engine on the model itself. Compare sets the
        #: policy in TRL's colocated vLLM engine here (`EngineSpec("vllm", weights="policy")`).
        self.engine_for = engine_for

    def _score(self, step: int, model) -> None:
        from ..distributed import reshard_fsdp2

        if any(r["step"] == step for r in self.records):
            return
        was_training = model.training
        model.eval()
        try:
            engine = (self.engine_for(model) if self.engine_for is not None
                      else live_policy_engine(model, self.tokenizer, self.batch_size, self.accelerator))
            record = {"step": step, **self.evaluator.evaluate(engine)}
        finally:
            model.train(was_training)
            reshard_fsdp2(model)  # forward-only passes leave FSDP2 units unsharded (TRL's next vLLM sync needs shards)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if 0 in self.steps and state.global_step == 0:
            self._score(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self._score(state.global_step, model)
