"""Building the frozen anchor pi_0 for a running `GRPOTrainer` and the estimator that uses it."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from .answers import AnswerMatcher
from .engines.base import Engine, SamplingSettings
from .estimators import MajorityEstimator, ReferenceEstimator, SynthesisEstimator
from .extraction import get_extractor

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
    is_peft = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    source = resolve_anchor_weights(
        args.cat_anchor_weights,
        is_peft=is_peft,
        has_ref_model=trainer.ref_model is not None,
        sync_ref_model=args.sync_ref_model,
    )
    tokenizer = trainer.processing_class
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
    common = dict(batch_size=args.cat_anchor_batch_size, max_context_tokens=args.cat_anchor_max_context)

    if source == "peft_base":

        @contextlib.contextmanager
        def provider():
            with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
                # A pretrained adapter gets a frozen "ref" copy from TRL (beta > 0): that copy *is* pi_0.
                adapter = "ref" if "ref" in getattr(model, "peft_config", {}) else None
                with use_adapter(model, adapter):
                    yield model

        config = trainer.accelerator.unwrap_model(trainer.model).config
        engine = TransformersEngine(provider, tokenizer, name=f"{config._name_or_path}:peft_base", **common)
    elif source == "ref_model":

        def provider():
            return unwrap_model_for_generation(trainer.ref_model, trainer.accelerator)

        config = trainer.accelerator.unwrap_model(trainer.ref_model).config
        engine = TransformersEngine(provider, tokenizer, name=f"{config._name_or_path}:ref_model", **common)
    else:
        path = args.cat_anchor_model_name_or_path or model_name_or_path
        if path is None:
            path = trainer.accelerator.unwrap_model(trainer.model).config._name_or_path
        from .models import resolve_model_path

        path = resolve_model_path(path)
        dtype = (args.model_init_kwargs or {}).get("dtype", trainer.accelerator.unwrap_model(trainer.model).dtype)
        engine = TransformersEngine.from_pretrained(path, dtype=dtype, device=trainer.accelerator.device, **common)
    if engine.max_context_tokens is None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine._max_context = getattr(model.config, "max_position_embeddings", None)
    logger.info("CaT anchor: %s engine, weights from %s", args.cat_anchor_engine, source)
    return engine, source


def build_estimator(args, engine: Engine | None, matcher: AnswerMatcher) -> ReferenceEstimator:
    extract = get_extractor(args.cat_answer_extraction)
    if args.cat_estimator == "majority":
        return MajorityEstimator(matcher, extract)
    if engine is None:
        raise ValueError("cat_estimator=synthesis needs an anchor engine")
    return SynthesisEstimator(
        engine,
        anchor_sampling(args),
        template=args.synthesis_template,
        include_question=args.cat_include_question,
        max_context_tokens=args.cat_anchor_max_context,
        chat_template_kwargs=args.chat_template_kwargs,
        extract_answer=extract,
    )
