"""Kill a CaT-RL run after a checkpoint, resume it, and check the anchor is still the initial policy pi_0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cat_trl.engines import SamplingSettings, TransformersEngine

pytestmark = pytest.mark.multiproc  # subprocess-based

PROMPTS = [[{"role": "user", "content": "Add 2 and 3."}], [{"role": "user", "content": "What is 7 times 6?"}]]
GREEDY = SamplingSettings(max_new_tokens=10, temperature=0)


def _launch(repo_root, tiny, out, extra):
    cmd = [sys.executable, "-m", "cat_trl.cli.train", "--config", str(repo_root / "tests" / "recipes" / "tiny.yaml"),
           "--model_name_or_path", tiny, "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1",
           "--learning_rate", "5e-2", *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _perturb(checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    files = list(checkpoint.glob("*.safetensors"))
    assert files, f"no weights in {checkpoint}"
    gen = torch.Generator().manual_seed(0)
    for f in files:
        tensors = load_file(str(f))
        save_file({k: v + torch.randn(v.shape, generator=gen) * 0.5 if v.is_floating_point() else v
                   for k, v in tensors.items()}, str(f), metadata={"format": "pt"})


@pytest.mark.parametrize("peft", [False, True], ids=["full-copy-anchor", "peft-base-anchor"])
def test_kill_and_resume_keeps_pi0_as_anchor(tmp_path, repo_root, tiny_model_path, peft):
    from cat_trl.cli.train import parse_args, run

    out = tmp_path / "run"
    extra = ["--max_steps", "40"] + (["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "q_proj",
                                      "v_proj"] if peft else [])
    proc = _launch(repo_root, tiny_model_path, out, extra)
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint-2 within 240 s"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # a crash, not a clean stop
    proc.wait()
    assert not (out / "checkpoint-40").exists()
    checkpoint = max((p for p in out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    resumed_from = int(checkpoint.name.split("-")[1])
    _perturb(checkpoint)  # the tiny model earns no reward, so make the checkpointed policy visibly differ from pi_0

    argv = ["--config", str(repo_root / "tests" / "recipes" / "tiny.yaml"), "--model_name_or_path", tiny_model_path,
            "--output_dir", str(out), "--save_strategy", "no", "--learning_rate", "5e-2",
            "--max_steps", str(resumed_from + 1), "--resume_from_checkpoint", "last", *extra[2:]]
    trainer, _ = run(*parse_args(argv))
    assert trainer.state.global_step == resumed_from + 1

    initial = TransformersEngine.from_pretrained(tiny_model_path, dtype=torch.float32)
    expected = [g.text for g in initial.generate(PROMPTS, GREEDY)]
    assert [g.text for g in trainer.cat_engine.generate(PROMPTS, GREEDY)] == expected  # the anchor is pi_0
    policy = TransformersEngine(trainer.accelerator.unwrap_model(trainer.model), initial.tokenizer)
    assert [g.text for g in policy.generate(PROMPTS, GREEDY)] != expected  # ...while the policy has moved

    rows = [json.loads(line) for line in (out / "cat_groups.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["group"]) for r in rows]
    assert len(keys) == len(set(keys)), "resumed steps were logged twice"
    assert max(r["step"] for r in rows) == resumed_from
