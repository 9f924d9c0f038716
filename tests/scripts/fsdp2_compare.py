"""`cat-trl compare`'s held-out scoring under FSDP2 on 2 CPU processes, run by tests/test_fsdp2.py through
accelerate's FSDP2 plugin:

    accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        scripts/fsdp2_cpu.py tests/scripts/fsdp2_compare.py --config tests/recipes/compare-tiny.yaml \\
        --model_name_or_path DIR --output_dir DIR

The initial model is scored from its own unsharded copy (`run_initial`); the CaT arm then trains with its step 0
scored *in training*, by the FSDP2-sharded policy as a collective (every rank generates together, ranks with fewer
problems padded). Rank 0 writes both results to `<output_dir>/fsdp2_compare.json`: the two step-0 points must agree
problem by problem.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import torch

    from cat_trl.cli.compare import parse_args
    from cat_trl.comparison.runner import Comparison

    compare_args, arm_args, root = parse_args(sys.argv[1:])
    comparison = Comparison(compare_args, arm_args, root)
    comparison.prepare()
    initial = comparison.run_initial()
    comparison.steps = [0, *comparison.steps]  # step 0 scored in training, by the sharded policy (no initial handed in)
    cat = comparison.run_rl("cat", None)
    from accelerate import PartialState

    if PartialState().is_main_process:
        with open(os.path.join(root, "fsdp2_compare.json"), "w") as f:
            json.dump({"initial": initial, "cat": cat,
                       "distributed_type": str(PartialState().distributed_type)}, f, indent=1)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
