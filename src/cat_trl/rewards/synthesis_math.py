"""A self-contained CaT reward for vanilla `GRPOTrainer` and `trl grpo`: it forms whole groups and calls the anchor
itself, so no trainer subclass is needed.

It must be a *synchronous* reward function: it runs collectives (`gather_object`) and all ranks call reward
functions in lockstep only on the main thread (TRL runs async rewards on a separate event-loop thread).
"""

from __future__ import annotations

import os
from typing import Any

from ..engines.base import Engine, SamplingSettings
from ..estimators import EstimatorSpec, ReferenceEstimator, anchor_sampling, build_estimator
from ..estimators.across_ranks import estimate_all, gather_groups, local_references
from ..trl_compat import trainer_of_reward_call
from .verifiable import CaTMathReward


class CaTSynthesisMathReward:
    """Anchor synthesis + verifiable reward in one callable.

    Args:
        num_generations: G. Optional inside a TRL trainer, whose G it reads (groups may be split across processes, so
            G is never guessed from the batch); when given, it must equal the trainer's. Required outside a trainer.
        engine: the anchor engine. If None, a frozen copy of `anchor_model` is loaded on this process's device at the
            first call (the initial policy: pass the same path as the policy's `model_name_or_path`). Copies
            (`copy.copy`, `copy.deepcopy`) share it; pickling drops it (weights and sockets do not pickle) and the
            unpickled reward reloads `anchor_model`.
        anchor_model: path or hub id of pi_0, used when `engine` is None.
        estimator: `"synthesis"` (CaT) or `"majority"` (TTRL-style, no anchor).
        match / extraction: answer matching and extraction, see `CaTMathReward`.
        anchor_max_new_tokens, anchor_temperature, anchor_top_p, anchor_top_k, anchor_min_p, anchor_seed,
        anchor_max_context: the anchor's settings, as `CaTGRPOTrainer`'s `cat_anchor_*`. Sampling settings left
            unset follow the trainer's (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`), like
            `CaTGRPOTrainer`; outside a trainer they default to temperature 1, top-p 1, top-k off, min-p off.
        include_question: show the question to the anchor (ablation).

    Every call logs the reference answer as a `cat_reference_answer` completions-table column.

    Example:
        ```python
        from trl import GRPOConfig, GRPOTrainer
        from cat_trl.rewards import CaTSynthesisMathReward

        reward = CaTSynthesisMathReward(anchor_model="Qwen/Qwen3-4B")  # pi_0 = the initial policy; G from the trainer
        trainer = GRPOTrainer(model="Qwen/Qwen3-4B", reward_funcs=[reward], args=GRPOConfig(num_generations=8),
                              train_dataset=dataset)
        ```

    With `trl grpo --reward_funcs cat_trl.rewards.cat_synthesis_math_reward`, configure the module-level instance
    through environment variables (YAML `env:` block): `CAT_ANCHOR_MODEL` (required for synthesis), and optionally
    `CAT_NUM_GENERATIONS`, `CAT_ESTIMATOR`, `CAT_MATCH`, `CAT_ANSWER_EXTRACTION`, `CAT_ANCHOR_MAX_NEW_TOKENS`,
    `CAT_ANCHOR_TEMPERATURE`, `CAT_ANCHOR_TOP_P`, `CAT_ANCHOR_TOP_K`, `CAT_ANCHOR_MIN_P`, `CAT_ANCHOR_SEED`,
    `CAT_ANCHOR_MAX_CONTEXT`.
    """

    __name__ = "cat_synthesis_math_reward"
    #: environment variable -> (attribute, type)
    ENV = {
        "CAT_NUM_GENERATIONS": ("num_generations", int), "CAT_ANCHOR_MODEL": ("anchor_model", str),
        "CAT_ESTIMATOR": ("estimator_name", str), "CAT_ANCHOR_MAX_NEW_TOKENS": ("anchor_max_new_tokens", int),
        "CAT_ANCHOR_TEMPERATURE": ("anchor_temperature", float), "CAT_ANCHOR_TOP_P": ("anchor_top_p", float),
        "CAT_ANCHOR_TOP_K": ("anchor_top_k", int), "CAT_ANCHOR_MIN_P": ("anchor_min_p", float),
        "CAT_ANCHOR_SEED": ("anchor_seed", int), "CAT_ANCHOR_MAX_CONTEXT": ("anchor_max_context", int),
    }

    def __init__(
        self,
        num_generations: int | None = None,
        engine: Engine | None = None,
        anchor_model: str | None = None,
        *,
        estimator: str = "synthesis",
        match: str = "string",
        anchor_max_new_tokens: int = 1024,
        anchor_temperature: float | None = None,
        anchor_top_p: float | None = None,
        anchor_top_k: int | None = None,
        anchor_min_p: float | None = None,
        anchor_seed: int | None = None,
        anchor_max_context: int | None = None,
        include_question: bool = False,
        extraction: str = "boxed",
        from_env: bool = False,
    ):
        self.from_env = from_env
        self.num_generations = num_generations
        self.engine = engine
        self.anchor_model = anchor_model
        self.estimator_name = estimator
        self.anchor_max_new_tokens = anchor_max_new_tokens
        self.anchor_temperature, self.anchor_top_p = anchor_temperature, anchor_top_p
        self.anchor_top_k, self.anchor_min_p = anchor_top_k, anchor_min_p
        self.anchor_seed, self.anchor_max_context = anchor_seed, anchor_max_context
        self.include_question = include_question
        self.reward = CaTMathReward(match, extraction=extraction)
        self._estimator: ReferenceEstimator | None = None
        if not from_env:
            self._validate()

    def _names(self) -> dict[str, str]:
        """How the user sets each setting: constructor arguments, or environment variables in `from_env` mode."""
        if self.from_env or getattr(self, "_configured_from_env", False):
            return {"num_generations": "CAT_NUM_GENERATIONS", "anchor": "CAT_ANCHOR_MODEL (path of pi_0)",
                    "estimator": "CAT_ESTIMATOR"}
        return {"num_generations": "num_generations", "anchor": "engine=... or anchor_model=<path of pi_0>",
                "estimator": "estimator"}

    def _validate(self) -> None:
        names = self._names()
        g = self.num_generations
        if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 2):
            raise ValueError(f"{names['num_generations']} must be an integer >= 2 (GRPOConfig.num_generations), got "
                             f"{g!r}")
        if self.estimator_name not in ("synthesis", "majority"):
            raise ValueError(f"{names['estimator']} must be 'synthesis' or 'majority', got {self.estimator_name!r}")
        if self.include_question and self.estimator_name != "synthesis":
            raise ValueError("include_question shows the question to the synthesizing anchor: it needs "
                             f"{names['estimator']}='synthesis', got {self.estimator_name!r}")
        if self.estimator_name == "synthesis" and self.engine is None and not self.anchor_model:
            raise ValueError(f"The synthesis estimator needs an anchor: set {names['anchor']}.")
        checks = {"anchor_max_new_tokens": lambda v: v >= 1, "anchor_temperature": lambda v: v >= 0,
                  "anchor_top_p": lambda v: 0 < v <= 1, "anchor_top_k": lambda v: v >= 0,
                  "anchor_min_p": lambda v: 0 <= v <= 1, "anchor_max_context": lambda v: v >= 1}
        for name, ok in checks.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name}={value!r} is out of range")

    def _configure_from_env(self) -> None:
        self._configured_from_env = True
        for var, (attr, kind) in self.ENV.items():
            if var in os.environ:
                try:
                    setattr(self, attr, kind(os.environ[var]))
                except ValueError:
                    raise ValueError(f"{var}={os.environ[var]!r} is not a valid {kind.__name__}") from None
        self.reward = CaTMathReward(os.environ.get("CAT_MATCH", self.reward.matcher.mode),
                                    extraction=os.environ.get("CAT_ANSWER_EXTRACTION", "boxed"))
        self.from_env = False
        self._validate()

    def _sampling(self, trainer) -> SamplingSettings:
        """The anchor samples like the trainer's policy unless set here (`anchor_sampling`, as in the trainer)."""
        return anchor_sampling(getattr(trainer, "args", None), max_new_tokens=self.anchor_max_new_tokens,
                               temperature=self.anchor_temperature, top_p=self.anchor_top_p, top_k=self.anchor_top_k,
                               min_p=self.anchor_min_p, seed=self.anchor_seed)

    def _build_estimator(self, trainer) -> ReferenceEstimator:
        """The estimator from its `EstimatorSpec`."""
        sampling = self._sampling(trainer) if self.estimator_name == "synthesis" else None
        spec = EstimatorSpec(self.estimator_name, sampling=sampling, include_question=self.include_question,
                             max_context_tokens=self.anchor_max_context, answer_extraction=self.reward.extraction,
                             match=self.reward.matcher.mode, match_timeout=self.reward.matcher.timeout)
        if spec.needs_engine and self.engine is None:
            if not self.anchor_model:
                raise ValueError(
                    "CaTSynthesisMathReward has no anchor: its engine is not carried through pickling. Construct it "
                    f"with {self._names()['anchor']} so it can reload the anchor."
                )
            from accelerate import PartialState

            from ..engines.factory import EngineSpec, build_engine

            self.engine = build_engine(EngineSpec("transformers", model=self.anchor_model, device=PartialState().device,
                                                  max_context=self.anchor_max_context))
        return build_estimator(spec, self.engine)

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        if self.from_env:
            self._configure_from_env()
        trainer = trainer_of_reward_call(kwargs.get("log_metric"))
        if self._estimator is None:
            self._estimator = self._build_estimator(trainer)
        batch = gather_groups(prompts, completions, self._group_size(trainer))
        references = local_references(batch, estimate_all(self._estimator, batch.groups))
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("cat_reference_answer", [r.answer for r in references])
        return self.reward(
            completions, cat_reference=[r.text for r in references], log_metric=kwargs.get("log_metric")
        )

    def _group_size(self, trainer) -> int:
        """G for this call: the trainer's (`num_generations_eval` for eval batches). A G given to this reward must
        agree with the trainer's; outside a trainer it is required."""
        train_g = getattr(trainer, "num_generations", None)
        if not isinstance(train_g, int):
            if self.num_generations is None:
                raise ValueError(f"CaTSynthesisMathReward is called outside a TRL trainer: set "
                                 f"{self._names()['num_generations']} (G) so it can cut the batch into groups.")
            return self.num_generations
        if self.num_generations is not None and train_g != self.num_generations:
            raise ValueError(
                f"CaTSynthesisMathReward was given {self._names()['num_generations']}={self.num_generations} but the "
                f"trainer uses num_generations={train_g}: groups would be cut wrongly. Pass the same value (or none)."
            )
        model = getattr(trainer, "model", None)
        if model is not None and not model.training:
            return getattr(trainer, "num_generations_eval", None) or train_g
        return train_g

    def __getstate__(self) -> dict[str, Any]:
        # Engines hold model weights or sockets: dropped when pickled, rebuilt lazily from `anchor_model`.
        state = dict(self.__dict__)
        state["_estimator"] = None
        state["engine"] = None
        return state

    def __deepcopy__(self, memo):
        """A copy shares the anchor engine (weights are not duplicated, and an `engine=` anchor is not lost)."""
        import copy

        clone = copy.copy(self)
        memo[id(self)] = clone
        clone.reward = copy.deepcopy(self.reward, memo)
        clone._estimator = None
        return clone

    def __copy__(self):
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)  # not __getstate__: a shallow copy keeps the engine
        return clone
