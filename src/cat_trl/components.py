"""Building the CaT components a `CaTGRPOTrainer` uses from its `CaTGRPOConfig`: the anchor engine, the reference
estimator, the judge and the open-ended reward functions.

This is the composition root: where `cat_*` settings become objects (the trainer reads a few more at run time:
per-step seeds, logging switches). The objects
themselves (engines, estimators, rubric proposer, judge, rewards) take plain arguments and know nothing of the
config, so they can be used without a trainer. Engines are built through `engines.factory` from an `EngineSpec`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from .engines.anchor_weights import resolve_anchor_weights
from .engines.base import Engine, SamplingSettings
from .engines.factory import EngineSpec, build_engine
from .estimators import EstimatorSpec, ReferenceEstimator, anchor_sampling, build_estimator
from .rubrics.judge import Judge
from .rubrics.prompts import EQUIVALENCE_PROMPT, JUDGE_PROMPT

if TYPE_CHECKING:
    from trl import GRPOTrainer

logger = logging.getLogger(__name__)


def cat_anchor_sampling(args) -> SamplingSettings:
    """The anchor samples like the policy unless `cat_anchor_*` overrides are set (the paper's setting)."""
    return anchor_sampling(args, max_new_tokens=args.cat_anchor_max_new_tokens, temperature=args.cat_anchor_temperature,
                           top_p=args.cat_anchor_top_p, top_k=args.cat_anchor_top_k, min_p=args.cat_anchor_min_p)


def estimator_spec(args, kind: str | None = None, *, max_context_tokens: int | None = None) -> EstimatorSpec:
    """The `EstimatorSpec` of a `CaTGRPOConfig` (`kind` overrides `cat_estimator`: CaT-SFT always synthesizes)."""
    kind = kind or args.cat_estimator
    return EstimatorSpec(
        kind,
        sampling=cat_anchor_sampling(args) if kind in ("synthesis", "self_bon") else None,
        template=args.synthesis_template if kind == "synthesis" else None,
        include_question=args.cat_include_question if kind == "synthesis" else False,
        max_context_tokens=max_context_tokens or args.cat_anchor_max_context,
        chat_template_kwargs=args.chat_template_kwargs,
        answer_extraction=None if args.open_ended else args.cat_answer_extraction,
        match=args.cat_match, match_timeout=args.cat_match_timeout, seed=args.seed,
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
                          timeout=args.cat_anchor_timeout, max_retries=args.cat_anchor_max_retries,
                          on_failure=args.cat_anchor_on_failure,
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
    from .engines.vllm_colocated import VLLMAnchorUnsupported

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


def build_reference_estimator(args, engine: Engine | None) -> ReferenceEstimator:
    """The trainer's estimator: `estimator_spec(args)` built on the anchor, wrapped by the rubric proposer for
    `cat_reward: rubric`."""
    estimator = build_estimator(estimator_spec(args), engine)
    if args.cat_reward != "rubric":
        return estimator
    from .rubrics import RUBRIC_PROMPT, RubricEstimator, RubricProposer

    rubric_sampling = cat_anchor_sampling(args)
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
    return RubricEstimator(estimator, proposer)


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
    from .rewards.judged import (
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
