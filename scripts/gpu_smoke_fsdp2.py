"""2-GPU smoke test of the design card's full shape: FSDP2 (accelerate_configs/fsdp2.yaml) + the anchor in TRL's
colocated vLLM engine, pi_0 streamed from the sharded reference model / PEFT base and read from the checkpoint.

    pip install -e ".[vllm]"   # on a machine with >= 2 CUDA GPUs
    python scripts/gpu_smoke_fsdp2.py [--model HuggingFaceTB/SmolLM2-135M-Instruct]

It runs tests/scripts/fsdp2_vllm.py -- the worker `make test-vllm` runs on 2 CPU processes -- under a real (NCCL)
FSDP2 launch, once with full fine-tuning (ref_model, copy) and once with LoRA (peft_base), and checks what the CPU tests
check: every parameter sharded, the trained policy in vLLM after TRL's FSDP2 sync, the reference model == pi_0 on
every rank, and the anchor's greedy syntheses == the engine's start-up (pi_0) output from every weight source, with
rank 1 asking for nothing. Exit code 0 and "GPU FSDP2 SMOKE PASSED" on success. Never run here (no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _mean_abs(a, b) -> float:
    return statistics.mean(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    args = parser.parse_args(argv)
    import torch

    if torch.cuda.device_count() < 2:
        print("needs 2 CUDA GPUs", file=sys.stderr)
        return 2
    failures = []
    for mode in ("full", "peft"):
        out = Path(tempfile.mkdtemp(prefix=f"cat-fsdp2-{mode}-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / "fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
               "--main_process_port", port, str(REPO / "tests" / "scripts" / "fsdp2_vllm.py"), "--mode", mode,
               "--model", args.model, "--out", str(out)]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            failures.append(f"{mode}: launch exited {proc.returncode}")
            continue
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        for r in ranks:
            check = {
                "FSDP2": r["distributed_type"].endswith("FSDP") and r["fsdp_version"] == 2,
                "policy sharded": r["policy_dtensors"][0] == r["policy_dtensors"][1] > 0,
                "policy moved": _mean_abs(r["policy_hf"], r["pi0_hf"]) > 0.05,
                "policy in vLLM": _mean_abs(r["policy_vllm"], r["policy_hf"]) < 1e-2,
                "ref model is pi_0": "ref_hf" not in r or _mean_abs(r["ref_hf"], r["pi0_hf"]) < 1e-3,
            }
            for source, result in r["anchor"].items():
                check[f"anchor {source} == pi_0"] = (result["anchor"] == r["startup"]) if r["rank"] == 0 else \
                    result["anchor"] == []
            for name, ok in check.items():
                print(f"{mode} rank {r['rank']}: {name}: {'ok' if ok else 'FAILED'}")
                if not ok:
                    failures.append(f"{mode} rank {r['rank']}: {name}")
    if failures:
        print("GPU FSDP2 SMOKE FAILED: " + "; ".join(failures))
        return 1
    print("GPU FSDP2 SMOKE PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
