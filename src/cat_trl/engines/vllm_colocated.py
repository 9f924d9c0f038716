"""Engines that borrow TRL's colocated vLLM engine: pi_0 as the anchor, time-shared with the policy
(`cat_anchor_engine: vllm`, `VLLMAnchorEngine`), and the live policy itself for compare's held-out points
(`ColocatedPolicyEngine`). Both subclass `ColocatedVLLMEngine`, which subclasses the standalone `VLLMEngine`
(vllm_engine.py) and overrides only `_run`: how requests are built and read back exists once.

With `use_vllm: true, vllm_mode: colocate`, every GPU already hosts one `vllm.LLM` that TRL refreshes with the
policy's weights before each generation. vLLM does not support a second `LLM` in the same process (and sleep mode
allows one per process), so the anchor *borrows* that engine inside the reward step:

    wake weights (sleep mode) -> load pi_0's weights -> reset prefix cache -> wake KV cache (sleep mode)
    -> [TP: gather the group's prompts] -> one `generate` for all of this rank's syntheses -> [TP: slice back]
    -> sleep (sleep mode) -> mark the policy's weights stale (TRL re-syncs them before the next generation)

pi_0's weights come from (`cat_anchor_weights`): `peft_base` -- the policy's base weights with the adapter *not*
merged (no extra memory); `ref_model` -- TRL's frozen reference model; `copy` -- the initial checkpoint's tensors,
kept once in (pinned) CPU memory or streamed from its safetensors files on every call (`cat_vllm_anchor_offload`).
Under FSDP2 and ZeRO-3 the first two are sharded: they are streamed one parameter at a time (FSDP2:
`DTensor.full_tensor()`, ZeRO-3: TRL's `gather_params`), every rank taking part in every gather, exactly as TRL streams
its sharded policy; no rank holds more than one full parameter beyond its shard.

The vLLM calls are exactly the ones TRL 1.16 makes in `trl/generation/vllm_generation.py` (`load_weights` on the
driver worker's model, `reset_prefix_cache`, `wake_up(tags=...)`, `sleep(level=2)`, `generate` on token-id prompts
with `SamplingParams`), and nothing else, so this module stays as thin as TRL's own integration. It runs against real
vLLM (the CPU build) in `make test-vllm`, DDP and FSDP2; sleep mode and TP > 1 (refused by vLLM's CPU build) are
exercised with a stand-in (tests/test_vllm_anchor.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..trl_compat import (
    colocated_llm,
    fsdp_version,
    load_weights_into_vllm,
    mark_policy_stale,
    policy_syncs,
    set_weights_sleeping,
    sleep_mode_enabled,
    vllm_max_model_len,
    vllm_param_gather,
    vllm_tp_group,
    vllm_tp_size,
)
from .base import SamplingSettings
from .vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)

WeightSource = Callable[[], Iterator[tuple[str, torch.Tensor]]]


def vllm_param_name(name: str) -> str:
    """HF/PEFT/wrapper parameter name -> the name vLLM's `load_weights` expects (TRL's renaming rules)."""
    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def _full(param: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """One parameter in full. An FSDP2 (`fully_shard`) parameter is a `DTensor` holding this rank's shard:
    `full_tensor()` all-gathers it -- a collective, so every rank must walk the same parameters in the same order
    (the anchor loads pi_0 on every rank, also ranks with no group to synthesize). As in TRL's
    `_iter_fsdp2_params`, a CPU-offloaded shard moves to the device first (gloo/NCCL gather there)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        if device is not None and param.device != device:
            param = param.to(device)
        return param.full_tensor()
    return param.data


def peft_base_weights(model, gather: Callable = contextlib.nullcontext, device=None) -> WeightSource:
    """The PEFT policy's *unmerged* base weights: LoRA tensors skipped, `modules_to_save` replaced by the original
    module they shadow -- i.e. pi_0 exactly, with no copy made. Sharded parameters (ZeRO-3: `gather`; FSDP2:
    `DTensor`) are gathered one at a time, so no rank ever holds more than one full parameter beyond its shard."""

    def source():
        prefix = getattr(model, "prefix", "lora_")
        for name, param in model.named_parameters():
            if prefix in name or "modules_to_save." in name:
                continue
            with gather([param]):
                yield vllm_param_name(name.replace("original_module.", "")), _full(param, device)

    return source


def module_weights(module, gather: Callable = contextlib.nullcontext, device=None) -> WeightSource:
    """Every parameter of a (frozen) module, e.g. TRL's reference model, gathered one at a time (ZeRO-3: `gather`;
    FSDP2: `DTensor.full_tensor()`)."""

    def source():
        for name, param in module.named_parameters():
            with gather([param]):
                yield vllm_param_name(name), _full(param, device)

    return source


def checkpoint_weights(path: str, offload: str = "cpu", device: str | torch.device | None = None) -> WeightSource:
    """The initial checkpoint's tensors (`copy` mode). `offload="cpu"` reads them once into CPU memory (pinned when
    CUDA is available, for fast host-to-device copies); `"disk"` streams them from the safetensors files on every
    call (no resident copy; the page cache is shared between ranks on a node)."""
    import glob
    import os

    from safetensors import safe_open

    if not os.path.isdir(path):  # a hub id: the files vLLM itself loaded at start-up are in the local HF cache
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, allow_patterns=["*.safetensors", "*.json"])
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(
            f"cat_anchor_weights=copy with the vLLM anchor reads pi_0 from safetensors files, but {path!r} has none. "
            "Point cat_anchor_model_name_or_path at a local checkpoint directory (e.g. from `hf download`)."
        )
    if offload not in ("cpu", "disk"):
        raise ValueError(f"cat_vllm_anchor_offload must be 'cpu' or 'disk', got {offload!r}")

    def stream():
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    if offload == "disk":
        return stream
    pin = torch.cuda.is_available()
    resident = [(k, t.pin_memory() if pin else t) for k, t in stream()]
    logger.info("vLLM anchor: %d initial tensors kept in %sCPU memory (%.1f GiB)", len(resident),
                "pinned " if pin else "", sum(t.numel() * t.element_size() for _, t in resident) / 2**30)
    return lambda: iter(resident)


class ColocatedVLLMEngine(VLLMEngine):
    """A `VLLMEngine` on TRL's colocated `vllm.LLM` (`trainer.vllm_generation`), borrowed for one call at a time:
    `_load` puts the weights this engine answers with into it, then one `generate` runs (tensor parallel: on the
    prompts of the whole TP group), then the engine is put back to sleep when sleep mode is on. Subclasses say which
    weights (`_load`) and what TRL must be told afterwards (`_after`).

    Every rank calls it the same number of times (also with nothing to ask): weight loads under FSDP2/ZeRO-3 and the TP
    gather are collectives."""

    collective = True

    def __init__(self, vllm_generation, tokenizer, *, max_model_len: int | None = None, name: str = "vllm-colocate",
                 sampling_params_cls=None):
        self.vg = vllm_generation
        super().__init__(None, tokenizer, max_model_len=max_model_len, name=name,
                         sampling_params_cls=sampling_params_cls)

    @property
    def llm(self):
        return colocated_llm(self.vg)

    @property
    def _sleeps(self) -> bool:
        return sleep_mode_enabled(self.vg)

    def _load(self) -> None:
        raise NotImplementedError

    def _after(self) -> None:
        """Called after every call, also a failed one."""

    def _run(self, prompt_ids: list[list[int]], sampling: SamplingSettings, **extra) -> list[Any]:
        tp = vllm_tp_size(self.vg)
        self._load()
        try:
            if tp > 1:  # a TP group runs one engine: every rank must submit the same prompts
                gathered: list[Any] = [None] * tp
                torch.distributed.all_gather_object(gathered, prompt_ids, group=vllm_tp_group(self.vg))
                all_ids = [p for chunk in gathered for p in chunk]
            else:
                all_ids = prompt_ids
            if self._sleeps:
                self.llm.wake_up(tags=["kv_cache"])
            outputs = super()._run(all_ids, sampling, **extra)
            if tp > 1:  # ranks may hold different numbers of groups: slice at this rank's offset in the gather
                rank = torch.distributed.get_rank(group=vllm_tp_group(self.vg))
                start = sum(len(chunk) for chunk in gathered[:rank])
                outputs = outputs[start : start + len(prompt_ids)]
            return outputs
        finally:
            if self._sleeps:
                self.llm.sleep(level=2)
                set_weights_sleeping(self.vg, True)
            self._after()


class VLLMAnchorEngine(ColocatedVLLMEngine):
    """Runs pi_0 in TRL's colocated `vllm.LLM` between two policy generations (see the module docstring).

    Args:
        vllm_generation: TRL's `VLLMGeneration` (`trainer.vllm_generation`): its `llm`, `enable_sleep_mode`,
            `tensor_parallel_size`, `tp_group` are used, and `_llm_weights_sleeping` is kept truthful.
        weights: yields (vLLM name, tensor) for pi_0; a collective under ZeRO-3, so every rank calls `generate`
            (the estimators always do, also with nothing to synthesize).
        tokenizer: renders chat conversations to token ids (the policy's chat template).
        mark_policy_stale: called after every anchor call; the trainer sets `_last_loaded_step = -1` so that TRL
            pushes the policy's weights back before its next generation.
        max_model_len: the engine's context window (vLLM's `max_model_len`), reported at start-up.
        sampling_params_cls: `vllm.SamplingParams` (injectable for tests).
    """

    def __init__(
        self,
        vllm_generation,
        weights: WeightSource,
        tokenizer,
        *,
        mark_policy_stale: Callable[[], None],
        max_model_len: int | None = None,
        sampling_params_cls=None,
        name: str = "vllm-colocate",
        device: torch.device | str | None = None,
    ):
        super().__init__(vllm_generation, tokenizer, max_model_len=max_model_len, name=name,
                         sampling_params_cls=sampling_params_cls)
        self.weights = weights
        self.mark_policy_stale = mark_policy_stale
        #: `vllm_generation.policy_syncs` when pi_0 was last loaded (None: not resident). While TRL has not pushed the
        #: policy back since, pi_0 is still in the engine and consecutive anchor calls of one reward step (synthesis,
        #: rubric proposal, an anchor judge) skip the reload. Never with sleep mode (weights discarded after a call).
        self._pi0_loaded_at: int | None = None
        self.skipped_loads = 0
        self.device = device
        self.weight_loads = 0

    def _load(self) -> None:
        """pi_0's weights into the engine (after waking its weights in sleep mode), then a clean prefix cache: cached
        KV blocks of the policy's prompts must not be reused under other weights. Skipped while pi_0 is still
        resident (see `_pi0_loaded_at`)."""
        syncs = policy_syncs(self.vg)
        if self._pi0_loaded_at is not None and syncs == self._pi0_loaded_at and not self._sleeps:
            self.skipped_loads += 1
            return
        self._pi0_loaded_at = None
        if self._sleeps:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
            set_weights_sleeping(self.vg, False)
        device = None if self.device is None else torch.device(self.device)
        tensors = ((name, t if device is None or t.device == device else t.to(device, non_blocking=True))
                   for name, t in self.weights())
        load_weights_into_vllm(self.llm, tensors)  # load_weights on GPU, reload_weights on CPU (trl_compat)
        self.llm.reset_prefix_cache()
        self.weight_loads += 1
        self._pi0_loaded_at = syncs

    def _after(self) -> None:
        self.mark_policy_stale()


class ColocatedPolicyEngine(ColocatedVLLMEngine):
    """The *current policy* in TRL's colocated engine, for scoring it mid-training (compare's held-out points): TRL's
    own `sync_weights` pushes the policy in (waking the weights in sleep mode, gathering FSDP2/ZeRO-3 shards), then
    it generates. No second engine is built, and the anchor notices the sync (`policy_syncs`) and reloads pi_0 before
    its next call.

    One instance scores one point: it syncs on its first call and reuses the weights for its later calls (greedy, then
    samples) unless sleep mode discarded them or TRL synced since. Build a new one per point: the anchor loads pi_0
    into the same engine between points without telling it."""

    _synced_at: int | None = None

    def _load(self) -> None:
        if self._synced_at is not None and not self._sleeps and policy_syncs(self.vg) == self._synced_at:
            return
        self.vg.sync_weights()
        self.llm.reset_prefix_cache()
        self._synced_at = policy_syncs(self.vg)
        self.syncs = getattr(self, "syncs", 0) + 1


class VLLMAnchorUnsupported(ValueError):
    """The vLLM anchor cannot stream pi_0's weights in this setting; `cat_anchor_engine: auto` then falls back to the
    transformers anchor (logged), an explicit `vllm` raises this."""


def launch_fsdp_version(args) -> int | None:
    """The FSDP version this launch will shard with, known before any model loads: from the training arguments'
    `fsdp_config` (transformers' `fsdp_plugin_args`) or an `accelerate launch` FSDP config (`ACCELERATE_USE_FSDP`,
    `FSDP_VERSION`, which accelerate defaults to 1). None: not an FSDP launch."""
    import os

    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if plugin_args:
        return int(plugin_args.get("fsdp_version", 2))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


def check_vllm_anchor_sharding(source: str, fsdp_version: int | None) -> None:
    """Refuse the one sharded launch the vLLM anchor cannot stream pi_0 from: FSDP1 with a policy-sharing source.

    FSDP2 parameters are `DTensor`s, gathered one at a time (`_full`), as TRL streams its FSDP2 policy. FSDP1 flattens
    a module's parameters into one `FlatParameter` that only `summon_full_params` unflattens, module by module; cat-trl
    does not walk that (FSDP1 is legacy in accelerate and needs GPUs, so it could not be tested). ZeRO-3 goes through
    TRL's own `gather_params`. Called by `cat-trl train` before any model loads and by `build_vllm_anchor`.
    """
    if fsdp_version == 1 and source in ("peft_base", "ref_model"):
        raise VLLMAnchorUnsupported(
            f"cat_anchor_weights={source} with the vLLM anchor needs FSDP2 (fsdp_version: 2, as in "
            "accelerate_configs/fsdp2.yaml), not FSDP1; or use cat_anchor_weights: copy or cat_anchor_engine: transformers."
        )


def build_vllm_anchor(trainer, source: str, checkpoint: str | None, offload: str = "cpu", *,
                      max_context: int | None = None) -> VLLMAnchorEngine:
    """The time-shared anchor for a `GRPOTrainer` with `use_vllm: true, vllm_mode: colocate`. `max_context` caps the
    anchor's context below the engine's `max_model_len` (a larger value is refused: vLLM could not serve it)."""
    args = trainer.args
    vg = getattr(trainer, "vllm_generation", None)
    if not args.use_vllm or args.vllm_mode != "colocate" or vg is None or colocated_llm(vg) is None:
        raise ValueError(
            "cat_anchor_engine=vllm time-shares TRL's colocated vLLM engine: it needs use_vllm: true and "
            "vllm_mode: colocate. With vllm_mode: server, serve pi_0 separately (`vllm serve <initial model>`) and use "
            "cat_anchor_engine: openai, or use cat_anchor_engine: transformers."
        )
    gather = vllm_param_gather(vg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled:
        check_vllm_anchor_sharding(source, fsdp_version(trainer.accelerator))
    device = trainer.accelerator.device
    if source == "peft_base":
        if "ref" in getattr(model, "peft_config", {}):
            raise VLLMAnchorUnsupported(
                "The policy is a pre-trained adapter (pi_0 = base + that adapter); the vLLM anchor streams unmerged "
                "base weights only. Use cat_anchor_weights: copy with cat_anchor_model_name_or_path = the merged "
                "initial checkpoint, or cat_anchor_engine: transformers."
            )
        weights = peft_base_weights(model, gather, device)
    elif source == "ref_model":
        weights = module_weights(trainer.accelerator.unwrap_model(trainer.ref_model), gather, device)
    else:
        if checkpoint is None:
            raise ValueError("cat_anchor_weights=copy with the vLLM anchor needs the initial checkpoint's path")
        weights = checkpoint_weights(checkpoint, offload, device)

    limit = vllm_max_model_len(colocated_llm(vg))
    if max_context and limit and max_context > limit:
        raise ValueError(f"cat_anchor_max_context={max_context} exceeds the colocated vLLM engine's "
                         f"max_model_len={limit}; raise vllm_max_model_length or lower it.")
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    engine = VLLMAnchorEngine(vg, weights, tokenizer, mark_policy_stale=lambda: mark_policy_stale(trainer),
                              max_model_len=max_context or limit, name=f"vllm-colocate:{source}",
                              device=trainer.accelerator.device)
    logger.info("CaT anchor: time-shared colocated vLLM engine (weights from %s), max_model_len=%s", source,
                engine.max_context_tokens)
    return engine


def build_colocated_policy_engine(trainer) -> ColocatedPolicyEngine:
    """The live policy in a `GRPOTrainer`'s colocated vLLM engine (`use_vllm: true, vllm_mode: colocate`)."""
    vg = getattr(trainer, "vllm_generation", None)
    if not trainer.args.use_vllm or trainer.args.vllm_mode != "colocate" or vg is None or colocated_llm(vg) is None:
        raise ValueError("scoring the policy in TRL's vLLM engine needs use_vllm: true and vllm_mode: colocate "
                         "(with vllm_mode: server the policy's engine is in another process; score with transformers)")
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    return ColocatedPolicyEngine(vg, tokenizer, name="vllm-colocate:policy")
