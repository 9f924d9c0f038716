"""Peak host memory of one vLLM-anchor call per rank: pi_0 streamed from an FSDP2-sharded reference model vs DDP's
full reference model vs a `copy` (checkpoint tensors), on 2 CPU processes (vLLM's CPU build; `make bench-memory`).

    python benchmarks/anchor_memory.py                              # embedded SmolLM2-135M, float32
    python benchmarks/anchor_memory.py --output benchmarks/results-anchor-memory-cpu.json

Each setting is its own `accelerate launch` (FSDP2 through scripts/fsdp2_cpu.py); every rank builds the trainer with
its colocated vLLM engine, makes one warm-up anchor call, pushes the policy back (TRL's sync), then measures one more
anchor call: the kernel's peak-RSS counter (VmHWM) is reset just before it (`/proc/self/clear_refs`), so
`peak - rss_before` is what that call added at its peak. The question it answers: does streaming pi_0 from the sharded
module (one `full_tensor()` gather at a time) add more than one parameter's full size over DDP, where the reference
model's parameters are already whole? On vLLM's CPU build every source goes through `reload_weights`, which
re-creates the layers: that part is the same for all settings and shows up in each.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def worker(args) -> None:
    """One rank: trainer + colocated vLLM, one measured anchor call."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    from cat_trl.config import CaTGRPOConfig
    from cat_trl.data import load_synthetic_math
    from cat_trl.engines import SamplingSettings
    from cat_trl.engines.vllm_colocated import build_vllm_anchor
    from cat_trl.estimators.prompts import MATH_SYNTHESIS_PROMPT, build_synthesis_prompt
    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.rewards import CaTMathReward
    from cat_trl.trainer import CaTGRPOTrainer

    model = resolve_model_path(args.model)
    config = CaTGRPOConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"}, use_vllm=True, vllm_mode="colocate", vllm_max_model_length=2048,
        vllm_enable_sleep_mode=False, cat_vllm_llm_kwargs={"enforce_eager": True, "dtype": "float32"},
        num_generations=4, per_device_train_batch_size=4, max_completion_length=16, max_steps=1,
        beta=0.01, report_to=[], save_strategy="no", cat_anchor_engine="vllm", cat_anchor_weights="ref_model",
    )
    trainer = CaTGRPOTrainer(model, reward_funcs=[CaTMathReward("string")], args=config,
                             train_dataset=load_synthetic_math(8))
    rank = trainer.accelerator.process_index
    source = args.source
    anchor = build_vllm_anchor(trainer, source, model if source == "copy" else None, args.offload)
    groups = [["\\boxed{7}", "\\boxed{8}", "7 apples: \\boxed{7}", "\\boxed{7}"]] * 2
    conversations = [[{"role": "user", "content": build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, g)}] for g in groups]
    greedy = SamplingSettings(max_new_tokens=8, temperature=0.0)
    anchor.generate(conversations, greedy)  # warm-up: first reload, KV cache, kernels
    # A fresh anchor on the same engine: it does not know pi_0 is resident, so its call reloads it (the policy is not
    # trained here: under FSDP2 it is sharded only once `train()` prepares it, so TRL's sync cannot run yet).
    anchor = build_vllm_anchor(trainer, source, model if source == "copy" else None, args.offload)
    ref = trainer.ref_model
    params = list((ref if source != "copy" else trainer.accelerator.unwrap_model(trainer.model)).parameters())
    largest = max(p.numel() * p.element_size() for p in params)
    total = sum(p.numel() * p.element_size() for p in params)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _kib("VmRSS")
    anchor.generate(conversations, greedy)
    peak = _kib("VmHWM")
    from torch.distributed.tensor import DTensor

    record = {"setting": args.setting, "rank": rank, "source": source, "offload": args.offload,
              "sharded": any(isinstance(p, DTensor) for p in params), "weight_loads": anchor.weight_loads,
              "rss_before_mib": before / 1024, "peak_mib": peak / 1024, "added_mib": (peak - before) / 1024,
              "largest_param_mib": largest / MiB, "model_mib": total / MiB}
    with open(os.path.join(args.out, f"{args.setting}-rank{rank}.json"), "w") as f:
        json.dump(record, f)
    torch.distributed.barrier()


SETTINGS = {  # name: (launcher, weight source, copy offload)
    "fsdp2_ref_model": ("fsdp2", "ref_model", "cpu"),
    "ddp_ref_model": ("ddp", "ref_model", "cpu"),
    "ddp_copy_disk": ("ddp", "copy", "disk"),
    "ddp_copy_cpu": ("ddp", "copy", "cpu"),
}


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output", default=None, help="write the JSON result here")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--offload", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from cat_trl.evaluation.provenance import provenance

    out = tempfile.mkdtemp(prefix="anchor-memory-")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    records = []
    for name in args.settings:
        launcher, source, offload = SETTINGS[name]
        launch = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "accelerate_configs" / "fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
                   "--main_process_port", _port(), str(REPO / "scripts" / "fsdp2_cpu.py")]
                  if launcher == "fsdp2" else
                  [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                   _port()])
        cmd = [*launch, __file__, "--worker", "--setting", name, "--source", source, "--offload", offload, "--out",
               out, "--model", args.model]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
        for rank in (0, 1):
            records.append(json.loads(Path(out, f"{name}-rank{rank}.json").read_text()))
        print(f"{name:18s} " + "  ".join(
            f"rank {r['rank']}: +{r['added_mib']:.0f} MiB at peak (rss {r['rss_before_mib']:.0f} MiB)"
            for r in records[-2:]), flush=True)

    by = {(r["setting"], r["rank"]): r for r in records}
    summary = {}
    if "fsdp2_ref_model" in args.settings and "ddp_ref_model" in args.settings:
        extra = [by[("fsdp2_ref_model", k)]["added_mib"] - by[("ddp_ref_model", k)]["added_mib"] for k in (0, 1)]
        largest = by[("fsdp2_ref_model", 0)]["largest_param_mib"]
        summary = {"fsdp2_minus_ddp_added_mib": extra, "largest_param_mib": largest,
                   # page-granular RSS: allow 1 % over one parameter's size for allocator rounding
                   "target_met": all(e <= 1.01 * largest for e in extra)}
        print(f"FSDP2 streaming adds {extra[0]:.1f} / {extra[1]:.1f} MiB (rank 0 / 1) over DDP at the anchor call's "
              f"peak; one parameter's full size (the largest) is {largest:.1f} MiB -> target (<= 1.01 x that) "
              f"{'met' if summary['target_met'] else 'NOT met'}")
    result = {"benchmark": "anchor_memory", "model": args.model, "records": records, "summary": summary,
              "config": {"settings": {k: SETTINGS[k] for k in args.settings}, "dtype": "float32",
                         "vllm_max_model_length": 2048, "anchor_call": "2 groups x G=4, 8 greedy tokens"},
              "provenance": provenance()}
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
