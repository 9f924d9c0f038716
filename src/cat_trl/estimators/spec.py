"""The one way to build a reference estimator: an `EstimatorSpec` (plain settings) -> `build_estimator(spec, engine)`.

Estimators are built by the trainer (from `cat_*` settings), by the self-contained plain-TRL reward, by `cat-trl eval`
(every test-time method), by `cat-trl compare` (CaT-SFT's references) and by the pre-flight context check. They all
describe what they want as an `EstimatorSpec` and call `build_estimator`, so a rule (which estimators need an engine,
how the anchor's sampling falls back to the policy's, what "open-ended" turns off) lives here once -- as engines do
with `engines.factory.EngineSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..answers import AnswerMatcher, get_extractor
from ..engines.base import Engine, SamplingSettings, TokenizerBudget
from .base import ReferenceEstimator

#: estimator kinds `build_estimator` knows; `cat_estimator` takes all of them
ESTIMATORS = ("synthesis", "majority", "self_bon", "min_ppl", "mutual_predictability")
#: kinds that choose one of the G rollouts instead of writing a new reference
SELECTION = ("self_bon", "min_ppl", "mutual_predictability")


@dataclass(frozen=True)
class EstimatorSpec:
    """What estimator to build, in plain values.

    kind: one of `ESTIMATORS`.
    sampling: the anchor's decoding settings (synthesis, self_bon); see `anchor_sampling` for the usual way to make it.
    template: the synthesis / self-BoN prompt; None keeps the estimator's default.
    include_question: synthesis only -- the paper's question-blind anchor is False; True is the ablation.
    answer_extraction: how final answers are read (`answers.get_extractor` names); None for open-ended tasks, where
        references have no final answer.
    match, match_timeout: the `AnswerMatcher` majority voting clusters answers with.
    fallback: selection kinds, when no choice can be read: "none" (the group gets no reference: RL) or "first"
        (rollout 1: test-time evaluation, where every method must answer).
    seed: mutual predictability's shuffles of the other rollouts.
    """

    kind: str
    sampling: SamplingSettings | None = None
    template: str | None = None
    include_question: bool = False
    max_context_tokens: int | None = None
    chat_template_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    answer_extraction: str | None = "boxed"
    match: str = "string"
    match_timeout: float | None = 5.0
    fallback: str = "none"
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ESTIMATORS:
            raise ValueError(f"estimator {self.kind!r} is not one of {', '.join(ESTIMATORS)}")
        if self.kind == "majority" and self.answer_extraction is None:
            raise ValueError("the majority estimator votes on final answers; an open-ended task has none")
        if self.kind in ("synthesis", "self_bon") and self.sampling is None:
            raise ValueError(f"the {self.kind} estimator generates: give it the anchor's sampling settings")
        if self.include_question and self.kind != "synthesis":
            raise ValueError("include_question is a synthesis setting")
        if self.template is not None and self.kind not in ("synthesis", "self_bon"):
            raise ValueError(f"the {self.kind} estimator writes no prompt: template is a synthesis/self_bon setting")

    @property
    def needs_engine(self) -> bool:
        return self.kind != "majority"


def anchor_sampling(policy: Any = None, *, max_new_tokens: int, temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
                    seed: int | None = None) -> SamplingSettings:
    """The anchor's sampling: each setting given here, else the policy's (`policy` has TRL's `GRPOConfig` sampling
    fields: temperature, top_p, top_k, min_p, repetition_penalty), else the neutral default. The paper's anchor
    samples like the policy; the `cat_anchor_*` settings override one field at a time."""

    def pick(own, name, default):
        if own is not None:
            return own
        value = getattr(policy, name, None)
        return default if value is None else value

    return SamplingSettings(
        max_new_tokens=max_new_tokens,
        temperature=pick(temperature, "temperature", 1.0),
        top_p=pick(top_p, "top_p", 1.0),
        top_k=pick(top_k, "top_k", 0) or 0,
        min_p=pick(min_p, "min_p", None),
        repetition_penalty=getattr(policy, "repetition_penalty", None) or 1.0,
        seed=seed,
    )


def build_estimator(spec: EstimatorSpec, engine: Engine | None = None) -> ReferenceEstimator:
    """The estimator `spec` describes, on `engine` (None only for majority voting)."""
    from .majority import MajorityEstimator
    from .selection import MinPPLEstimator, MutualPredictabilityEstimator, SelfBoNEstimator
    from .synthesis import SynthesisEstimator

    extract = None if spec.answer_extraction is None else get_extractor(spec.answer_extraction)
    if spec.kind == "majority":
        return MajorityEstimator(AnswerMatcher(spec.match, spec.match_timeout), extract)
    if engine is None:
        raise ValueError(f"the {spec.kind} estimator needs an anchor engine")
    common: dict[str, Any] = {"extract_answer": extract, "chat_template_kwargs": spec.chat_template_kwargs}
    if spec.template is not None:
        common["template"] = spec.template
    if spec.kind == "synthesis":
        return SynthesisEstimator(engine, spec.sampling, include_question=spec.include_question,
                                  max_context_tokens=spec.max_context_tokens, **common)
    if spec.kind == "self_bon":
        return SelfBoNEstimator(engine, spec.sampling, fallback=spec.fallback,
                                max_context_tokens=spec.max_context_tokens, **common)
    if spec.kind == "min_ppl":
        return MinPPLEstimator(engine, fallback=spec.fallback, **common)
    return MutualPredictabilityEstimator(engine, fallback=spec.fallback, seed=spec.seed,
                                         max_context_tokens=spec.max_context_tokens, **common)


class _TokenCounter(TokenizerBudget, Engine):
    """Counts tokens exactly like the anchor engines (same tokenizer, same chat template) and generates nothing:
    what a budget check before any weights load needs."""

    name = "token-counter"

    def __init__(self, tokenizer: Any, max_context_tokens: int | None):
        super().__init__()
        self.tokenizer = tokenizer
        self._max_context = max_context_tokens

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        raise RuntimeError("a token counter does not generate")


def check_context_budget(spec: EstimatorSpec, tokenizer: Any, num_generations: int,
                         max_completion_length: int) -> dict[str, int | None]:
    """Can `num_generations` rollouts of `max_completion_length` tokens fit the anchor's context
    (`spec.max_context_tokens`) next to its prompt and new tokens? Counted with the model's tokenizer before any
    weights load; raises ValueError when not even a useful fraction fits, else returns the estimator's budget report."""
    estimator = build_estimator(spec, _TokenCounter(tokenizer, spec.max_context_tokens))
    check = getattr(estimator, "check_budget", None)
    return check(num_generations, max_completion_length) if check else {"budget": None, "per_rollout_cap": None}
