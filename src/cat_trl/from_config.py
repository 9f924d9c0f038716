"""Building the CaT components a `CaTGRPOTrainer` uses from its `CaTGRPOConfig`: the anchor engine, the reference
estimator, the judge and the open-ended reward functions.

This is the composition root: the only module that reads `cat_*` settings to construct objects. The objects
themselves (engines, estimators, rubric proposer, judge, rewards) take plain arguments and know nothing of the
config, so they can be used without a trainer. Engines are built through `engines.factory` from an `EngineSpec`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from .answers import AnswerMatcher, get_extractor
from .engines.anchor_weights import resolve_anchor_weights
from .engines.base import Engine, SamplingSettings
from .engines.factory import EngineSpec, build_engine
from .estimators import (
    MajorityEstimator,
    MinPPLEstimator,
    MutualPredictabilityEstimator,
    ReferenceEstimator,
    SelfBoNEstimator,
    SynthesisEstimator,
)
from .rubrics.judge import Judge
from .rubrics.prompts import EQUIVALENCE_PROMPT, JUDGE_PROMPT

if TYPE_CHECKING:
    from trl import GRPOTrainer

logger = logging.getLogger(__name__)


def anchor_sampling(args) -> SamplingSettings:
    """The anchor samples like the policy unless `cat_anchor_*` overrides are set (the paper's setting)."""
    pick = lambda override, default: default if override is None else override  # noqa: E731
    return SamplingSettings(
        max_new_tokens=args.cat_anchor_max_new_tokens,
        temperature=pick(getattr(args, "cat_anchor_temperature", None), args.temperature),
        top_p=pick(getattr(args, "cat_anchor_top_p", None), args.top_p),
        top_k=pick(getattr(args, "cat_anchor_top_k", None), args.top_k or 0),
        min_p=pick(getattr(args, "cat_anchor_min_p", None), args.min_p),
        repetition_penalty=args.repetition_penalty,
    )


def anchor_engine_spec(trainer: GRPOTrainer, kind: str, model_name_or_path: str | None = None) -> EngineSpec:
    """The anchor's `EngineSpec` for `trainer` and engine `kind` (`cat_anchor_engine`, already resolved from `auto`)."""
    from peft import PeftModel

    args = trainer.args
    if kind == "openai":
        served = args.cat_anchor_model_name_or_path or model_name_or_path
        if not served:
            raise ValueError("cat_anchor_engine=openai needs cat_anchor_model_name_or_path (the served model name)")
        return EngineSpec("openai", weights="server", model=served, base_url=args.cat_anchor_base_url,
                          api_key_env=args.cat_anchor_api_key_env, max_context=args.cat_anchor_max_context,
                          cache=args.cat_anchor_seed is not None)  # unseeded sampling must not replay cached syntheses
    policy = trainer.accelerator.unwrap_model(trainer.model)
    source = resolve_anchor_weights(args.cat_anchor_weights, is_peft=isinstance(policy, PeftModel),
                                    has_ref_model=trainer.ref_model is not None, sync_ref_model=args.sync_ref_model)
    init_kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    return EngineSpec(
        kind, weights=source, model=args.cat_anchor_model_name_or_path or model_name_or_path,
        max_context=args.cat_anchor_max_context, batch_size=args.cat_anchor_batch_size,
        dtype=init_kwargs.get("dtype", policy.dtype), device=trainer.accelerator.device, load_kwargs=init_kwargs,
        vllm_offload=args.cat_vllm_anchor_offload,
    )


def build_anchor_engine(trainer: GRPOTrainer, model_name_or_path: str | None = None) -> tuple[Engine, str, str]:
    """(engine, weight source, engine kind) of the anchor for `trainer`.

    With `cat_anchor_engine: auto` resolved to vllm, a weight source the vLLM engine cannot stream falls back to the
    transformers engine (logged); the kind returned is the one really used (the trainer records it)."""
    from .engines.vllm_engine import VLLMAnchorUnsupported

    args = trainer.args
    kind = args.cat_anchor_engine
    spec = anchor_engine_spec(trainer, kind, model_name_or_path)
    try:
        engine = build_engine(spec, trainer)
    except VLLMAnchorUnsupported as err:
        if not getattr(args, "cat_anchor_engine_auto", False):
            raise
        logger.warning("CaT anchor: cat_anchor_engine=auto falls back to transformers: %s", err)
        kind, spec = "transformers", replace(spec, kind="transformers")
        engine = build_engine(spec, trainer)
    logger.info("CaT anchor: %s engine, weights from %s", kind, spec.weights)
    return engine, spec.weights, kind


def build_estimator(args, engine: Engine | None, matcher: AnswerMatcher) -> ReferenceEstimator:
    extract = None if args.open_ended else get_extractor(args.cat_answer_extraction)
    if args.cat_estimator == "majority":
        return MajorityEstimator(matcher, extract)
    if engine is None:
        raise ValueError(f"cat_estimator={args.cat_estimator} needs an anchor engine")
    if args.cat_estimator == "self_bon":
        return SelfBoNEstimator(
            engine,
            anchor_sampling(args),
            max_context_tokens=args.cat_anchor_max_context,
            chat_template_kwargs=args.chat_template_kwargs,
            extract_answer=extract,
        )
    if args.cat_estimator in ("min_ppl", "mutual_predictability"):
        cls = MinPPLEstimator if args.cat_estimator == "min_ppl" else MutualPredictabilityEstimator
        extra = {} if cls is MinPPLEstimator else {"seed": args.seed, "max_context_tokens": args.cat_anchor_max_context}
        return cls(engine, extract_answer=extract, chat_template_kwargs=args.chat_template_kwargs, **extra)
    synthesis = SynthesisEstimator(
        engine,
        anchor_sampling(args),
        template=args.synthesis_template,
        include_question=args.cat_include_question,
        max_context_tokens=args.cat_anchor_max_context,
        chat_template_kwargs=args.chat_template_kwargs,
        extract_answer=extract,
    )
    if args.cat_reward != "rubric":
        return synthesis
    from .rubrics import RUBRIC_PROMPT, RubricEstimator, RubricProposer

    rubric_sampling = anchor_sampling(args)
    if args.cat_rubric_max_new_tokens:
        rubric_sampling = replace(rubric_sampling, max_new_tokens=args.cat_rubric_max_new_tokens)
    proposer = RubricProposer(
        engine,
        rubric_sampling,
        template=args.cat_rubric_prompt or RUBRIC_PROMPT,
        include_conversation=args.cat_rubric_include_conversation,
        min_criteria=args.cat_rubric_min_criteria,
        max_criteria=args.cat_rubric_max_criteria,
        allow_list=args.cat_rubric_allow_list,
        chat_template_kwargs=args.chat_template_kwargs,
    )
    return RubricEstimator(synthesis, proposer)


def build_judge_engine(args) -> Engine | None:
    """The judge's engine, or None for `cat_judge_engine: anchor` (filled in once the anchor exists)."""
    if args.cat_judge_engine == "openai":
        return build_engine(EngineSpec(
            "openai", weights="server", model=args.cat_judge_model, base_url=args.cat_judge_base_url,
            api_key_env=args.cat_judge_api_key_env, max_concurrency=args.cat_judge_max_concurrency,
            timeout=args.cat_judge_timeout, max_retries=args.cat_judge_max_retries, cache_path=args.cat_judge_cache_path,
        ))
    if args.cat_judge_engine == "transformers":
        return build_engine(EngineSpec("transformers", model=args.cat_judge_model, device=args.device,
                                       batch_size=args.cat_anchor_batch_size))
    return None


def build_judge(args, engine: Engine | None) -> Judge:
    template = args.cat_judge_prompt or (EQUIVALENCE_PROMPT if args.cat_reward == "judge_equivalence" else JUDGE_PROMPT)
    return Judge(engine if engine is not None else _Pending(), args.cat_judge_mode, template=template,
                 max_new_tokens=args.cat_judge_max_new_tokens, chat_template_kwargs=args.cat_judge_chat_template_kwargs)


class _Pending(Engine):
    """Placeholder until the anchor engine exists (cat_judge_engine: anchor)."""

    name = "anchor"

    def generate(self, conversations, sampling, chat_template_kwargs=None):
        raise RuntimeError("the judge's engine was never attached")


def open_ended_rewards(args, judge: Judge) -> list:
    from .rewards.rubric import (
        AsyncCaTRubricReward,
        CaTRubricReward,
        JudgeEquivalenceReward,
        PhysicianRubricReward,
    )

    penalty = dict(length_penalty_tokens=args.cat_length_penalty_tokens, length_penalty=args.cat_length_penalty)
    if args.cat_reward == "rubric":
        # An HTTP judge runs as an async reward (off the main thread, overlapping other async rewards); an in-process
        # judge stays synchronous on the main thread (collectives, device work).
        cls = AsyncCaTRubricReward if args.cat_judge_engine == "openai" else CaTRubricReward
        return [cls(judge, **penalty)]
    if args.cat_reward == "judge_equivalence":
        return [JudgeEquivalenceReward(judge, **penalty)]
    if args.cat_reward == "physician_rubric":
        return [PhysicianRubricReward(judge, **penalty)]
    raise ValueError(f"cat_reward={args.cat_reward!r} is not an open-ended reward")
