"""One way to build an engine: a small `EngineSpec` in, a ready `Engine` out.

Training (the anchor and the judge), `cat-trl eval` (policy pool, grader), `cat-trl healthbench-eval` (policy,
grader) and the plain-TRL `CaTSynthesisMathReward` all build their engines here, so every engine of a run is
configured the same way and the spec is complete before construction: nothing is patched onto an engine (or its
caller's config) afterwards. Sampling is not part of the spec: it is per call (the estimator's, the judge's).

Weight sources (`weights`):
    copy       a separately loaded frozen checkpoint (`model`: path or alias); the only source without a trainer
               (`kind: vllm` without a trainer: a standalone `vllm.LLM`; with one: pi_0 in TRL's colocated engine).
    policy     the trainer's live policy as it is now (held-out scoring during training): `kind: vllm` syncs it into
               TRL's colocated engine, `kind: transformers` generates with the model itself.
    peft_base  the trainer's policy with its adapters off (or TRL's frozen "ref" copy of a pre-trained adapter).
    ref_model  TRL's reference model (beta > 0, sync_ref_model off): it *is* pi_0.
    server     a model served behind an OpenAI-compatible API (`kind: openai`; `model` = served name).

Example:

    >>> from cat_trl.engines.factory import EngineSpec, build_engine
    >>> judge = build_engine(EngineSpec("openai", model="gpt-4o-2024-08-06", base_url="https://api.openai.com/v1"))
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..distributed import full_weights_on_every_rank, params_sharded
from .base import Engine

if TYPE_CHECKING:
    from trl import GRPOTrainer

logger = logging.getLogger(__name__)

EngineKind = Literal["transformers", "vllm", "openai"]
WeightSource = Literal["copy", "peft_base", "ref_model", "policy", "server"]


@dataclass(frozen=True)
class EngineSpec:
    """What to build.

    Args:
        kind: `transformers` (in-process), `vllm` (a standalone `vllm.LLM`, or with a trainer its colocated vLLM
            engine, time-shared) or `openai` (any OpenAI-compatible server).
        weights: where the weights come from (module docstring); `server` for `kind: openai`.
        model: checkpoint path or alias (`copy`), served model name (`openai`); for trainer-bound sources only a name.
        max_context: context window in tokens (None: the model's `max_position_embeddings`, vLLM's `max_model_len`,
            unknown for a server). A vLLM engine refuses a value above its `max_model_len`.
        batch_size: sequences per forward micro-batch (transformers); None = all at once.
        dtype, device, load_kwargs: how a `copy` is loaded (`load_kwargs` = the policy's `model_init_kwargs`, so the
            anchor loads exactly like the policy).
        base_url, api_key_env, max_concurrency, timeout, max_retries, cache, cache_path: the HTTP client (`openai`);
            on_failure: `raise` or `skip` a request the server could not answer (`OpenAIEngine`).
        vllm_offload: `cpu` or `disk`, where a vLLM `copy` anchor keeps the checkpoint's tensors between calls.
        llm_kwargs: further `vllm.LLM` arguments of a standalone vLLM engine (`gpu_memory_utilization`, ...).
        seed: a standalone vLLM engine's seed (unseeded requests).
    """

    kind: EngineKind
    weights: WeightSource = "copy"
    model: str | None = None
    max_context: int | None = None
    batch_size: int | None = None
    dtype: Any = "auto"
    device: Any = None
    load_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout: float = 120.0
    max_retries: int = 4
    cache: bool = True
    cache_path: str | None = None
    vllm_offload: str = "cpu"
    llm_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    seed: int = 0
    on_failure: str = "raise"

    def __post_init__(self):
        if self.kind not in ("transformers", "vllm", "openai"):
            raise ValueError(f"engine kind {self.kind!r} is not one of 'transformers', 'vllm', 'openai'")
        if (self.kind == "openai") != (self.weights == "server"):
            raise ValueError(f"engine kind {self.kind!r} with weights {self.weights!r}: a server engine serves its own "
                             "weights (weights: server), every other kind loads them")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("an OpenAI-compatible engine needs base_url and model (the served model name)")


def build_engine(spec: EngineSpec, trainer: GRPOTrainer | None = None) -> Engine:
    """The engine `spec` describes. `trainer` is required for `kind: vllm` and the `peft_base` / `ref_model`
    sources (they share the trainer's models or vLLM engine) and ignored otherwise.

    Raises:
        ValueError: a trainer-bound source without a trainer, or a context window above what the engine supports.
        VLLMAnchorUnsupported: the vLLM engine cannot stream these weights (callers may fall back to transformers).
    """
    if spec.kind == "openai":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(
            spec.base_url, spec.model, api_key_env=spec.api_key_env, max_concurrency=spec.max_concurrency,
            timeout=spec.timeout, max_retries=spec.max_retries, cache=spec.cache, cache_path=spec.cache_path,
            max_context_tokens=spec.max_context, on_failure=spec.on_failure,
        )
    if trainer is None and spec.weights != "copy":
        raise ValueError(f"a {spec.kind} engine on weights {spec.weights!r} shares a trainer's models: pass trainer=")
    if spec.kind == "vllm" and trainer is None:
        from ..embedded_model import resolve_model_path
        from .vllm_engine import VLLMEngine

        if not spec.model:
            raise ValueError("a standalone vLLM engine needs `model` (a checkpoint path or alias)")
        return VLLMEngine.from_pretrained(resolve_model_path(spec.model), dtype=spec.dtype, max_context=spec.max_context,
                                          seed=spec.seed, llm_kwargs=spec.llm_kwargs)
    if spec.kind == "vllm":
        return _vllm_engine(spec, trainer)
    if spec.weights == "policy":
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        return live_policy_engine(trainer.model, tokenizer, spec.batch_size, trainer.accelerator)
    if spec.weights == "copy":
        from ..embedded_model import resolve_model_path
        from .transformers_engine import TransformersEngine

        # Under ZeRO-3, transformers partitions every model it loads (zero.Init): the copy is sharded too.
        collective = trainer is not None and _is_zero3(trainer.accelerator)
        # Under FSDP nothing prepares the copy: it must load its real weights on every rank (see distributed.py).
        with full_weights_on_every_rank():
            return TransformersEngine.from_pretrained(
                resolve_model_path(_copy_source(spec, trainer)), dtype=spec.dtype, device=spec.device,
                load_kwargs=spec.load_kwargs, batch_size=spec.batch_size, max_context_tokens=spec.max_context,
                collective=collective,
            )
    return _shared_transformers_engine(spec, trainer)


def live_policy_engine(model, tokenizer, batch_size: int | None = None, accelerator=None) -> Engine:
    """A transformers engine on a live policy as it is now (PEFT adapters active, as the policy generates): the
    `policy` weight source of `kind: transformers`, for a model whose trainer is not at hand (e.g. inside a callback).

    With `accelerator` and a sharded policy (FSDP2, ZeRO-3, more than one process) the engine is collective: it
    generates inside TRL's `unwrap_model_for_generation` (gathers ZeRO-3 parameters, turns gradient checkpointing off)
    with every rank running the same number of micro-batches (`synced_gpus`), as the sharded anchor does."""
    from .transformers_engine import TransformersEngine

    if accelerator is None or not params_sharded(accelerator):
        return TransformersEngine(model, tokenizer, batch_size=batch_size, name="policy")
    from ..trl_compat import unwrap_for_generation

    return TransformersEngine(lambda: unwrap_for_generation(model, accelerator), tokenizer, batch_size=batch_size,
                              name="policy", collective=True,
                              max_context_tokens=getattr(getattr(model, "config", None), "max_position_embeddings",
                                                         None))


def _copy_source(spec: EngineSpec, trainer) -> str:
    if spec.model:
        return spec.model
    if trainer is None:
        raise ValueError("a copy engine needs `model` (a checkpoint path or alias)")
    return trainer.accelerator.unwrap_model(trainer.model).config.name_or_path


def _policy_context(trainer) -> int | None:
    config = trainer.accelerator.unwrap_model(trainer.model).config
    return getattr(config, "max_position_embeddings", None)


def _shared_transformers_engine(spec: EngineSpec, trainer) -> Engine:
    """An in-process engine on weights the trainer already holds (no copy): the PEFT base or TRL's ref model."""
    from ..trl_compat import unwrap_for_generation, use_adapter
    from .transformers_engine import TransformersEngine

    args = trainer.args
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)  # processors wrap one
    # Policy-sharing anchors are sharded under FSDP / ZeRO-3: their forward passes are collectives, so the engine
    # keeps all ranks at the same number of micro-batches.
    sharded = params_sharded(trainer.accelerator)
    if spec.weights == "peft_base":

        @contextlib.contextmanager
        def provider():
            with unwrap_for_generation(trainer.model_wrapped, trainer.accelerator,
                                       gather_deepspeed3_params=args.ds3_gather_for_generation,
                                       gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model:
                # A pretrained adapter gets a frozen "ref" copy (TRL with beta > 0, or CaT): that copy *is* pi_0.
                adapter = "ref" if "ref" in getattr(model, "peft_config", {}) else None
                with use_adapter(model, adapter):
                    yield model

        source_model = trainer.model
    elif spec.weights == "ref_model":

        def provider():
            return unwrap_for_generation(trainer.ref_model, trainer.accelerator,
                                         gather_deepspeed3_params=args.ds3_gather_for_generation)

        source_model = trainer.ref_model
    else:
        raise ValueError(f"unknown weight source {spec.weights!r}")
    config = trainer.accelerator.unwrap_model(source_model).config
    return TransformersEngine(
        provider, tokenizer, name=f"{config._name_or_path}:{spec.weights}", collective=sharded,
        batch_size=spec.batch_size, max_context_tokens=spec.max_context or _policy_context(trainer),
    )


def _vllm_engine(spec: EngineSpec, trainer) -> Engine:
    from .vllm_colocated import build_colocated_policy_engine, build_vllm_anchor

    if spec.weights == "policy":
        return build_colocated_policy_engine(trainer)
    checkpoint = None
    if spec.weights == "copy":
        from ..embedded_model import resolve_model_path

        checkpoint = resolve_model_path(_copy_source(spec, trainer))
    return build_vllm_anchor(trainer, spec.weights, checkpoint, spec.vllm_offload, max_context=spec.max_context)


def _is_zero3(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return params_sharded(accelerator) and accelerator.distributed_type == DistributedType.DEEPSPEED
