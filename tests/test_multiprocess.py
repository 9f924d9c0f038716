"""A real 2-process CaT-RL job (gloo on CPU) in which groups of G are split across ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from cat_trl.callbacks import read_group_rows
from cat_trl.estimators import build_synthesis_prompt
from cat_trl.estimators.prompts import MATH_SYNTHESIS_PROMPT

pytestmark = pytest.mark.multiproc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_user(prompt) -> str:
    return [m for m in prompt if m["role"] == "user"][-1]["content"]


def test_two_process_split_groups(tmp_path, tiny_model_path, repo_root):
    out = tmp_path / "run"
    # per_device_train_batch_size=6 with G=4 on 2 ranks: 3 groups per step, the middle one split across ranks.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "cat_trl.cli.train", "--config", str(repo_root / "tests" / "recipes" / "tiny.yaml"),
        "--model_name_or_path", tiny_model_path, "--output_dir", str(out),
        "--per_device_train_batch_size", "6", "--num_generations", "4", "--max_steps", "2",
        "--log_completions", "true",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    rows = read_group_rows(str(out))
    assert len(rows) == 6  # 2 steps x 3 groups, written once (main process)
    assert {r["estimated_on_rank"] for r in rows} == {0, 1}, "groups were not shared out over both ranks"
    for row in rows:
        assert len(row["completions"]) == 4
        assert row["anchor_prompt"] == build_synthesis_prompt(MATH_SYNTHESIS_PROMPT, row["completions"])

    # Independent source: TRL's own completions log (gathered from both ranks). Each group's completions must be
    # exactly the 4 completions TRL generated for that prompt.
    frames = pd.concat([pd.read_parquet(p) for p in sorted((out / "completions").glob("*.parquet"))])
    trl_groups = Counter()
    for (step, prompt), frame in frames.groupby(
        [frames["step"], frames["prompt"].map(lambda p: _last_user(p))]
    ):
        trl_groups[(prompt, tuple(sorted(c[-1]["content"] for c in frame["completion"])))] += 1
    ours = Counter((r["prompt"], tuple(sorted(r["completions"]))) for r in rows)
    assert ours == trl_groups
    # Every completion's reference answer column came back to its own rank (gathered table has one per row).
    assert frames["cat_reference_answer"].shape[0] == 24


def test_estimator_failure_on_one_rank_raises_on_all_ranks(repo_root):
    """Without the (ok, payload) gather, rank 0 would wait forever in the collective for rank 1's references."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(repo_root / "tests" / "scripts" / "failing_rank.py"),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 raised" in proc.stdout and "rank 1 raised" in proc.stdout


def test_collective_engine_keeps_ranks_in_step(repo_root, tiny_model_path):
    """FSDP/ZeRO-3 make every forward pass a collective. A rank with nothing to do must still run as many
    micro-batches as the busiest rank, or the others hang. gloo stands in for NCCL; `synced_gpus` is exercised."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(repo_root / "tests" / "scripts" / "collective_engine.py"), tiny_model_path,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    by_rank = {r["rank"]: r for r in lines}
    assert by_rank[0]["generate_calls"] == by_rank[1]["generate_calls"] == 3  # ceil(5 / 2) on both ranks
    assert by_rank[0]["noop"] == 0 and by_rank[1]["noop"] == 9  # 3 generate + 3 + 3 forward micro-batches
    assert by_rank[0]["results"] == by_rank[0]["scores"] == by_rank[0]["logprobs"] == 5
    assert by_rank[1]["results"] == 0
    assert by_rank[0]["same"] and by_rank[1]["same"]  # padding does not change rank 0's outputs
