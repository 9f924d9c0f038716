"""Run a cat-trl entry point under accelerate's FSDP2 plugin on a CPU-only machine (gloo): for tests and CI.

Why this exists: `accelerate launch --config_file accelerate_configs/fsdp2.yaml` on a machine without GPUs starts the
processes with `ACCELERATE_USE_FSDP=true` and the `FSDP_*` settings, but `AcceleratorState` only takes its FSDP branch
for GPU-family launches: on CPU the state says `MULTI_CPU` and the model is silently wrapped in DDP. torch's FSDP2
(`fully_shard`) itself runs on CPU with gloo. This launcher switches the state to FSDP -- with the plugin accelerate
built from the very same `FSDP_*` variables -- every time the state is initialised, then runs the entry point. Nothing
else changes: transformers' `Trainer`, TRL and cat-trl take their real FSDP2 code paths (sharded `DTensor`
parameters, `fully_shard`-ed reference model, FSDP2 weight streaming into vLLM, FULL_STATE_DICT checkpoints).

Usage (the launch command of a GPU run with `--num_processes 2 --mixed_precision no` and this file in front):

    accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        scripts/fsdp2_cpu.py -m cat_trl.cli.train --config yaml/quickstart.yaml --max_steps 2

(or `scripts/fsdp2_cpu.py some_script.py ARGS`).

It never acts on a GPU run: it refuses to start where CUDA is available (launch without it there), and it does
nothing unless the launch asked for FSDP. The library never imports it.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys


def _wants_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def install() -> None:
    """Patch `AcceleratorState.__init__` so that a CPU (gloo) launch that asked for FSDP gets FSDP."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = AcceleratorState.__init__
    if getattr(original, "_cat_fsdp2_cpu", False):
        return

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type != DistributedType.MULTI_CPU or not _wants_fsdp():
            return
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise SystemExit("scripts/fsdp2_cpu.py runs FSDP2 only (fsdp_version: 2); FSDP1 needs GPUs")
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init._cat_fsdp2_cpu = True
    AcceleratorState.__init__ = init


def main(argv: list[str]) -> None:
    import torch

    if torch.cuda.is_available():
        raise SystemExit("scripts/fsdp2_cpu.py is for CPU-only machines; on GPUs accelerate's own FSDP2 launch works: "
                         "drop this file from the command.")
    if not _wants_fsdp():
        raise SystemExit("scripts/fsdp2_cpu.py: the launch did not ask for FSDP (use --config_file "
                         "accelerate_configs/fsdp2.yaml)")
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        raise SystemExit("usage: scripts/fsdp2_cpu.py (-m MODULE | SCRIPT.py) [ARGS...]")
    install()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
