"""A real FSDP2 CaT-RL run on CPU (gloo), launched by tests/test_fsdp2.py through accelerate's FSDP2 plugin:

    accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        scripts/fsdp2_cpu.py tests/scripts/fsdp2_cat.py --source ref_model --model DIR --out DIR [--resume]

`CaTGRPOTrainer` with the transformers anchor on one weight source (`ref_model`: full fine-tuning with beta > 0,
`peft_base`: LoRA, `copy`: a frozen copy), greedy anchor, a dense extra reward so that the policy really moves away
from pi_0. Each rank writes `<out>/rank<r>.json`: how the policy (and TRL's reference model) is sharded, the anchor
engine's collective padding, and what it trained. The test compares the anchor's logged syntheses
(`cat_groups.jsonl`) with a fresh pi_0's greedy output on the same prompts, in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run through runpy too: moving_policy beside it

from moving_policy import build_trainer  # noqa: E402


def sharding(module) -> dict:
    """How a module's parameters are held on this rank: DTensor count, and local vs full elements."""
    from torch.distributed.tensor import DTensor

    params = list(module.named_parameters())
    dtensors = [(n, p) for n, p in params if isinstance(p, DTensor)]
    return {
        "params": len(params),
        "dtensors": len(dtensors),
        "local_numel": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for _, p in params),
        "full_numel": sum(p.numel() for _, p in params),
        "example": None if not dtensors else {"name": dtensors[0][0], "local": list(dtensors[0][1].to_local().shape),
                                               "full": list(dtensors[0][1].shape)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", choices=["ref_model", "peft_base", "copy"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=6, help="per-device batch; G=4 (6: 3 groups, 2 + 1 per rank)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint, one more step")
    cli = parser.parse_args()

    import torch
    from transformers import TrainerCallback

    from cat_trl.config import CaTGRPOConfig

    peft = cli.source == "peft_base"
    steps = cli.steps + (1 if cli.resume else 0)
    args = CaTGRPOConfig(
        output_dir=os.path.join(cli.out, "trainer"), use_cpu=True, bf16=False, model_init_kwargs={"dtype": "float32"},
        num_generations=4, per_device_train_batch_size=cli.batch, max_completion_length=16, max_steps=steps,
        learning_rate=5e-2 if peft else 1e-2, beta=0.01 if cli.source == "ref_model" else 0.0, logging_steps=1,
        save_strategy="steps", save_steps=1, report_to=[], seed=0, cat_anchor_engine="transformers",
        cat_anchor_weights=cli.source, cat_anchor_temperature=0.0, cat_anchor_max_new_tokens=16,
        cat_anchor_batch_size=1, cat_answer_extraction="boxed_or_final", gradient_checkpointing=False,
    )
    trainer = build_trainer(cli.model, args, peft=peft)
    rank = trainer.accelerator.process_index
    record: dict = {"rank": rank, "world_size": trainer.accelerator.num_processes,
                    "distributed_type": str(trainer.accelerator.distributed_type),
                    "is_fsdp_enabled": trainer.is_fsdp_enabled,
                    "fsdp_version": getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", None),
                    "anchor_source": trainer.cat_anchor_source, "anchor_engine": trainer.cat_engine.name,
                    "anchor_collective": trainer.cat_engine.collective}

    class Probe(TrainerCallback):
        """The sharding as it is during training (after `prepare`), read at the end of the first step."""

        def on_step_end(self, _args, state, control, **kwargs):
            if "policy" not in record:
                record["policy"] = sharding(trainer.model_wrapped)
                record["policy_class"] = type(trainer.model_wrapped).__name__
                if trainer.ref_model is not None:
                    record["ref_model"] = sharding(trainer.ref_model)

    trainer.add_callback(Probe())
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    record["global_step"] = trainer.state.global_step
    record["noop_batches"] = trainer.cat_engine.stats.extra.get("noop_batches", 0)
    record["anchor_calls"] = trainer.cat_engine.stats.calls
    record["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.save_model(os.path.join(cli.out, "final"))  # FULL_STATE_DICT: a plain checkpoint, gathered on save
    with open(os.path.join(cli.out, f"rank{rank}{'-resume' if cli.resume else ''}.json"), "w") as f:
        json.dump(record, f, indent=1)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
