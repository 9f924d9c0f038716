"""A self-contained CaT reward for vanilla `GRPOTrainer` and `trl grpo`: it forms whole groups and calls the anchor
itself, so no trainer subclass is needed.

It must be a *synchronous* reward function: it runs collectives (`gather_object`) and all ranks call reward
functions in lockstep only on the main thread (TRL runs async rewards on a separate event-loop thread).
"""

from __future__ import annotations

import os
from typing import Any

from ..engines.base import Engine, SamplingSettings
from ..estimators import MajorityEstimator, ReferenceEstimator, SynthesisEstimator
from ..grouping import estimate_all, gather_groups, local_references
from .verifiable import CaTMathReward


class CaTSynthesisMathReward:
    """Anchor synthesis + verifiable reward in one callable.

    Args:
        num_generations: G, exactly as in `GRPOConfig.num_generations` (the reward cannot infer it: groups may be
            split across processes).
        engine: the anchor engine. If None, a frozen copy of `anchor_model` is loaded on this process's device at the
            first call (the initial policy: pass the same path as the policy's `model_name_or_path`).
        anchor_model: path or hub id of pi_0, used when `engine` is None.
        estimator: `"synthesis"` (CaT) or `"majority"` (TTRL-style, no anchor).
        match / extraction: answer matching and extraction, see `CaTMathReward`.
        anchor_max_new_tokens / anchor_temperature / anchor_top_p / anchor_top_k: the anchor's sampling.
        include_question: show the question to the anchor (ablation).

    Every call logs the reference answer as a `cat_reference_answer` completions-table column.

    With `trl grpo --reward_funcs cat_trl.rewards.cat_synthesis_math_reward`, configure the module-level instance
    through environment variables (YAML `env:` block): `CAT_NUM_GENERATIONS` (required), `CAT_ANCHOR_MODEL`
    (required for synthesis), `CAT_ESTIMATOR`, `CAT_MATCH`, `CAT_ANSWER_EXTRACTION`, `CAT_ANCHOR_MAX_NEW_TOKENS`, `CAT_ANCHOR_TEMPERATURE`.
    """

    __name__ = "cat_synthesis_math_reward"

    def __init__(
        self,
        num_generations: int | None = None,
        engine: Engine | None = None,
        anchor_model: str | None = None,
        *,
        estimator: str = "synthesis",
        match: str = "string",
        anchor_max_new_tokens: int = 1024,
        anchor_temperature: float = 1.0,
        anchor_top_p: float = 1.0,
        anchor_top_k: int = 0,
        include_question: bool = False,
        extraction: str = "boxed",
        from_env: bool = False,
    ):
        self.from_env = from_env
        self.num_generations = num_generations
        self.engine = engine
        self.anchor_model = anchor_model
        self.estimator_name = estimator
        self.sampling = SamplingSettings(
            max_new_tokens=anchor_max_new_tokens, temperature=anchor_temperature, top_p=anchor_top_p, top_k=anchor_top_k
        )
        self.include_question = include_question
        self.reward = CaTMathReward(match, extraction=extraction)
        self._estimator: ReferenceEstimator | None = None
        if not from_env:
            self._validate()

    def _validate(self) -> None:
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise ValueError(f"num_generations must be an int >= 2 (GRPOConfig.num_generations), got {self.num_generations!r}")
        if self.estimator_name not in ("synthesis", "majority"):
            raise ValueError(f"estimator must be 'synthesis' or 'majority', got {self.estimator_name!r}")
        if self.estimator_name == "synthesis" and self.engine is None and not self.anchor_model:
            raise ValueError("The synthesis estimator needs an anchor: pass engine=... or anchor_model=<path of pi_0>.")

    def _configure_from_env(self) -> None:
        env = os.environ
        if "CAT_NUM_GENERATIONS" not in env:
            raise ValueError(
                "cat_synthesis_math_reward is configured from the environment: set CAT_NUM_GENERATIONS (= "
                "num_generations) and CAT_ANCHOR_MODEL (path of the initial policy), e.g. in the YAML `env:` block."
            )
        self.num_generations = int(env["CAT_NUM_GENERATIONS"])
        self.anchor_model = env.get("CAT_ANCHOR_MODEL", self.anchor_model)
        self.estimator_name = env.get("CAT_ESTIMATOR", self.estimator_name)
        self.reward = CaTMathReward(
            env.get("CAT_MATCH", "string"), extraction=env.get("CAT_ANSWER_EXTRACTION", "boxed")
        )
        self.sampling = SamplingSettings(
            max_new_tokens=int(env.get("CAT_ANCHOR_MAX_NEW_TOKENS", self.sampling.max_new_tokens)),
            temperature=float(env.get("CAT_ANCHOR_TEMPERATURE", self.sampling.temperature)),
            top_p=self.sampling.top_p,
            top_k=self.sampling.top_k,
        )
        self.from_env = False
        self._validate()

    def _build_estimator(self) -> ReferenceEstimator:
        if self.estimator_name == "majority":
            return MajorityEstimator(self.reward.matcher, self.reward.extract)
        if self.engine is None:
            if not self.anchor_model:
                raise ValueError(
                    "CaTSynthesisMathReward has no anchor: its engine is not carried through pickling/copying. "
                    "Construct it with anchor_model=<path of pi_0> so it can reload the anchor, or pass engine= again."
                )
            from accelerate import PartialState

            from ..engines.transformers_engine import TransformersEngine
            from ..models import resolve_model_path

            self.engine = TransformersEngine.from_pretrained(
                resolve_model_path(self.anchor_model), device=PartialState().device
            )
        return SynthesisEstimator(
            self.engine, self.sampling, include_question=self.include_question, extract_answer=self.reward.extract
        )

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        if self.from_env:
            self._configure_from_env()
        if self._estimator is None:
            self._estimator = self._build_estimator()
        batch = gather_groups(prompts, completions, self._group_size(kwargs.get("log_metric")))
        references = local_references(batch, estimate_all(self._estimator, batch.groups))
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("cat_reference_answer", [r.answer for r in references])
        return self.reward(
            completions, cat_reference=[r.text for r in references], log_metric=kwargs.get("log_metric")
        )

    def _group_size(self, log_metric) -> int:
        """G for this call. Inside a TRL trainer (whose bound `log_metric` TRL passes in) eval batches use
        `num_generations_eval`; the trainer's own train G must agree with the one this reward was given."""
        trainer = getattr(log_metric, "__self__", None)
        train_g = getattr(trainer, "num_generations", None)
        if not isinstance(train_g, int):
            return self.num_generations
        if train_g != self.num_generations:
            raise ValueError(
                f"CaTSynthesisMathReward was built with num_generations={self.num_generations} but the trainer uses "
                f"num_generations={train_g}: groups would be cut wrongly. Pass the same value."
            )
        model = getattr(trainer, "model", None)
        if model is not None and not model.training:
            return getattr(trainer, "num_generations_eval", None) or train_g
        return train_g

    def __getstate__(self) -> dict[str, Any]:
        # Engines hold model weights or sockets: rebuilt lazily after unpickling.
        state = dict(self.__dict__)
        state["_estimator"] = None
        state["engine"] = None
        return state
