"""Building the frozen anchor pi_0 for a running `GRPOTrainer` and the estimator that uses it."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from .answers import AnswerMatcher, get_extractor
from .engines.base import Engine, SamplingSettings
from .estimators import (
    MajorityEstimator,
    MinPPLEstimator,
    MutualPredictabilityEstimator,
    ReferenceEstimator,
    SelfBoNEstimator,
    SynthesisEstimator,
)

if TYPE_CHECKING:
    from trl import GRPOTrainer

logger = logging.getLogger(__name__)


def resolve_anchor_weights(requested: str, *, is_peft: bool, has_ref_model: bool, sync_ref_model: bool) -> str:
    """Picks where pi_0's weights come from, refusing combinations that would not be pi_0."""
    if requested == "auto":
        if is_peft:
            return "peft_base"
        if has_ref_model and not sync_ref_model:
            return "ref_model"
        return "copy"
    if requested == "peft_base" and not is_peft:
        raise ValueError("cat_anchor_weights=peft_base needs a PEFT policy (use_peft: true). Use `copy` otherwise.")
    if requested == "ref_model":
        if sync_ref_model:
            raise ValueError("cat_anchor_weights=ref_model is refused with sync_ref_model=true (the ref drifts).")
        if not has_ref_model:
            raise ValueError(
                "cat_anchor_weights=ref_model but the trainer has no reference model (beta == 0, or PEFT, where the "
                "reference is the adapter-disabled base: use peft_base)."
            )
    return requested


def freeze_initial_adapter(model) -> bool:
    """Keeps a frozen copy of a *pre-trained* adapter as pi_0 when TRL does not (it only does when beta > 0).

    With a `PeftModel` passed in, "adapters off" is the base model, not the initial policy (base + adapter). TRL adds
    a frozen "ref" copy of the adapter only when beta > 0; CaT needs pi_0 regardless, so it adds the same copy (a few
    MB) itself. Returns whether a copy was added."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or "ref" in model.peft_config:
        return False
    default = model.peft_config.get("default")
    if default is None:
        raise ValueError(
            "CaT's peft_base anchor needs the pre-trained adapter to be named 'default' (found "
            f"{sorted(model.peft_config)}); or use cat_anchor_weights: copy with the merged initial checkpoint."
        )
    try:
        model.add_adapter("ref", default)
    except Exception as err:  # e.g. peft#3340 (target_parameters, PEFT < 0.20)
        raise ValueError(
            f"Could not add a frozen copy of the pre-trained adapter as the anchor ({err}). Use cat_anchor_weights: "
            "copy with cat_anchor_model_name_or_path pointing at the merged initial checkpoint."
        ) from err
    for name, param in model.named_parameters():
        if ".ref." in name:
            param.requires_grad_(False)
            param.data.copy_(model.get_parameter(name.replace(".ref.", ".default.")).data)
    model.set_adapter("default")
    return True


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


def build_anchor_engine(trainer: GRPOTrainer, model_name_or_path: str | None = None) -> tuple[Engine, str]:
    """The anchor engine for `trainer`, and the weight source it uses (`peft_base` / `ref_model` / `copy`)."""
    from peft import PeftModel
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer.utils import use_adapter

    from .engines.transformers_engine import TransformersEngine

    args = trainer.args
    if args.cat_anchor_engine == "openai":
        from .engines.openai_engine import OpenAIEngine

        served = args.cat_anchor_model_name_or_path or model_name_or_path
        if not served:
            raise ValueError("cat_anchor_engine=openai needs cat_anchor_model_name_or_path (the served model name)")
        engine = OpenAIEngine(
            args.cat_anchor_base_url,
            served,
            api_key_env=args.cat_anchor_api_key_env,
            max_context_tokens=args.cat_anchor_max_context,
            cache=args.cat_anchor_seed is not None,  # unseeded sampling must not replay cached syntheses
        )
        logger.info("CaT anchor: OpenAI-compatible server %s (%s)", engine.base_url, served)
        return engine, "server"
    is_peft = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    source = resolve_anchor_weights(
        args.cat_anchor_weights,
        is_peft=is_peft,
        has_ref_model=trainer.ref_model is not None,
        sync_ref_model=args.sync_ref_model,
    )
    if args.cat_anchor_engine == "vllm":
        from .engines.vllm_engine import VLLMAnchorUnsupported, build_vllm_anchor

        checkpoint = None
        if source == "copy":
            from .models import resolve_model_path

            checkpoint = resolve_model_path(args.cat_anchor_model_name_or_path or model_name_or_path
                                            or trainer.accelerator.unwrap_model(trainer.model).config._name_or_path)
        try:
            engine = build_vllm_anchor(trainer, source, checkpoint, args.cat_vllm_anchor_offload)
        except VLLMAnchorUnsupported as err:
            if not getattr(args, "cat_anchor_engine_auto", False):
                raise
            logger.warning("CaT anchor: cat_anchor_engine=auto falls back to transformers: %s", err)
            args.cat_anchor_engine = "transformers"  # what the run config and logs then record
            return build_anchor_engine(trainer, model_name_or_path)
        limit = engine.max_context_tokens
        if args.cat_anchor_max_context and limit and args.cat_anchor_max_context > limit:
            raise ValueError(f"cat_anchor_max_context={args.cat_anchor_max_context} exceeds the colocated vLLM "
                             f"engine's max_model_len={limit}; raise vllm_max_model_length or lower it.")
        if args.cat_anchor_max_context:
            engine._max_context = args.cat_anchor_max_context
        return engine, source
    tokenizer = trainer.processing_class
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
    common = dict(batch_size=args.cat_anchor_batch_size, max_context_tokens=args.cat_anchor_max_context)
    # Policy-sharing anchors (PEFT base, TRL's ref model) are sharded under FSDP / ZeRO-3: their forward passes are
    # collectives, so the engine keeps all ranks at the same number of micro-batches.
    sharded = trainer.accelerator.num_processes > 1 and (trainer.is_fsdp_enabled or _is_zero3(trainer))

    if source == "peft_base":

        @contextlib.contextmanager
        def provider():
            with unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
            ) as model:
                # A pretrained adapter gets a frozen "ref" copy from TRL (beta > 0): that copy *is* pi_0.
                adapter = "ref" if "ref" in getattr(model, "peft_config", {}) else None
                with use_adapter(model, adapter):
                    yield model

        config = trainer.accelerator.unwrap_model(trainer.model).config
        engine = TransformersEngine(
            provider, tokenizer, name=f"{config._name_or_path}:peft_base", collective=sharded, **common
        )
    elif source == "ref_model":

        def provider():
            return unwrap_model_for_generation(
                trainer.ref_model, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
            )

        config = trainer.accelerator.unwrap_model(trainer.ref_model).config
        engine = TransformersEngine(
            provider, tokenizer, name=f"{config._name_or_path}:ref_model", collective=sharded, **common
        )
    else:
        path = args.cat_anchor_model_name_or_path or model_name_or_path
        if path is None:
            path = trainer.accelerator.unwrap_model(trainer.model).config._name_or_path
        from .models import resolve_model_path

        path = resolve_model_path(path)
        init_kwargs = dict(args.model_init_kwargs or {})
        dtype = init_kwargs.get("dtype", trainer.accelerator.unwrap_model(trainer.model).dtype)
        # Under ZeRO-3, transformers partitions every model it loads (zero.Init): the copy is sharded too.
        engine = TransformersEngine.from_pretrained(
            path, dtype=dtype, device=trainer.accelerator.device, load_kwargs=init_kwargs,
            collective=_is_zero3(trainer) and trainer.accelerator.num_processes > 1, **common
        )
    if engine.max_context_tokens is None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine._max_context = getattr(model.config, "max_position_embeddings", None)
    logger.info("CaT anchor: %s engine, weights from %s", args.cat_anchor_engine, source)
    return engine, source


def _is_zero3(trainer) -> bool:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


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
    from dataclasses import replace

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
