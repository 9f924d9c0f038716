"""What every layer needs of the process group: `gather_all` (the one collective everything else builds on) and the
FSDP2 facts that hold across layers -- resharding after forward-only passes, and loading unprepared models with
real weights on every rank.

Kept apart from `estimators/across_ranks.py` (which uses `gather_all` to cut whole groups) so that engines, which must
keep ranks in step for sharded forward passes, do not depend on the grouping logic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from accelerate import PartialState
from accelerate.utils import gather_object


def gather_all(values: list) -> list:
    """Collective: the concatenation of every rank's list, in rank order (a copy when single-process)."""
    return gather_object(values) if PartialState().num_processes > 1 else list(values)


def reshard_fsdp2(model) -> int:
    """Shard an FSDP2 model's parameters again after forward passes with no backward (generation, scoring).

    FSDP2 keeps some units unsharded after their forward -- the root, and the embedding/final-norm/`lm_head` unit that
    accelerate wraps with `reshard_after_forward=False` -- expecting the backward to follow. Without one, their
    parameters stay plain full tensors: memory that is never freed, and TRL's FSDP2 vLLM sync
    (`param.full_tensor()`) fails on them. Returns the number of FSDP units resharded (0: not an FSDP2 model)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.reshard()
    return len(units)


def ram_efficient_loading() -> bool:
    """Whether transformers' `from_pretrained` is in FSDP "CPU-RAM-efficient" mode in this process: an accelerate FSDP
    launch with `fsdp_cpu_ram_efficient_loading: true` and torch.distributed up. Then only local rank 0 reads the
    checkpoint; transformers < 5.18 (what vLLM 0.31 pins) fills every other rank's parameters *and buffers* with
    zeros, expecting accelerate's `prepare` to broadcast rank 0's weights -- which it does for the policy only."""
    import os

    import torch.distributed as dist

    flag = lambda key: os.environ.get(key, "false").lower() in ("1", "true", "yes")  # noqa: E731
    return dist.is_available() and dist.is_initialized() and flag("ACCELERATE_USE_FSDP") and \
        flag("FSDP_CPU_RAM_EFFICIENT_LOADING")


@contextlib.contextmanager
def full_weights_on_every_rank() -> Iterator[None]:
    """Load models that accelerate never prepares (a frozen `copy` anchor, a transformers judge) with their real
    weights on every rank, also inside an FSDP launch with CPU-RAM-efficient loading (see `ram_efficient_loading`).
    Scoped: the launch's setting is restored on exit."""
    import os

    if not ram_efficient_loading():
        yield
        return
    saved = os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"]
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        yield
    finally:
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved


def params_sharded(accelerator) -> bool:
    """Whether this launch shards parameters across ranks (FSDP, or DeepSpeed ZeRO-3): then every forward pass is a
    collective, and a model must run the same number of passes on every rank."""
    from accelerate.utils import DistributedType

    from .trl_compat import deepspeed_zero_stage

    if accelerator.num_processes < 2:
        return False
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return accelerator.distributed_type == DistributedType.DEEPSPEED and deepspeed_zero_stage(accelerator) == 3
