"""The paper recipes, launched as written under `accelerate_configs/fsdp2.yaml` on 2 CPU processes (vLLM's CPU build):
the design card's full shape -- FSDP2-sharded policy, TRL's colocated vLLM engine, the anchor streamed from the
sharded reference model -- for one real step each.

Only what a CPU and this machine force is changed on the command line: the embedded SmolLM2-135M-Instruct for the
paper's model, lengths and context shrunk, one step with one accumulation step, `bf16: false, use_cpu: true`, eager
vLLM (no ~2 min compile per engine), no checkpoints, the local MATH-500 copy / the HealthBench fixture for the hub
datasets, and a loopback judge for GPT-4o. Every other key (G, sampling, beta, loss, the anchor engine and weights,
gradient checkpointing, the rubric settings, ...) is the recipe's own. Runs in `make test-vllm`.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import MATH500_PATH, REPO_ROOT, launch_fsdp2

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed here: `make test-vllm` builds .venv-vllm and runs these"),
]

SHRINK = ["--max_steps", "1", "--max_completion_length", "16", "--cat_anchor_max_new_tokens", "16",
          "--vllm_max_model_length", "2048", "--cat_anchor_max_context", "2048", "--gradient_accumulation_steps", "1",
          "--steps_per_generation", "1", "--bf16", "false", "--use_cpu", "true", "--save_strategy", "no",
          "--cat_vllm_llm_kwargs", '{"enforce_eager": true}']


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers every criterion "yes" (stands in for GPT-4o) and counts calls."""

    calls = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls += 1
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "judge",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "yes"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def _launch(recipe: str, tmp_path: Path, model: str, *extra: str) -> dict:
    out = tmp_path / "out"
    proc = launch_fsdp2(["-m", "cat_trl.cli.train", "--config", str(REPO_ROOT / recipe), "--model_name_or_path",
                         model, "--output_dir", str(out), *SHRINK, *extra], timeout=1200,
                        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stderr.count("time-shared colocated vLLM engine (weights from ref_model)") == 2  # one per rank
    return json.loads((out / "cat_summary.json").read_text()) | {"history": json.loads(
        (out / "trainer_state.json").read_text())["log_history"]}


@pytest.mark.parametrize("recipe", ["yaml/math500/qwen3-4b.yaml", "yaml/math500/gemma-3-4b-it.yaml",
                                    "yaml/math500/llama-3.1-8b-instruct.yaml"])
def test_math500_paper_recipe_runs_a_step_under_fsdp2(recipe, tmp_path, embedded_model_path):
    if not MATH500_PATH.is_file():
        pytest.fail(f"MATH-500 data not found at {MATH500_PATH}")
    result = _launch(recipe, tmp_path, embedded_model_path, "--dataset_name", str(MATH500_PATH))
    assert result["steps"] == 1
    step = [h for h in result["history"] if "cat/anchor_completion_tokens" in h][0]
    assert step["cat/anchor_completion_tokens"] > 0  # the anchor synthesized in the colocated engine


def test_healthbench_paper_recipe_runs_a_step_under_fsdp2(tmp_path, embedded_model_path, judge_url):
    fixture = REPO_ROOT / "tests" / "fixtures" / "healthbench_sample.jsonl"
    result = _launch("yaml/healthbench/qwen3-4b.yaml", tmp_path, embedded_model_path, "--dataset_name", str(fixture),
                     "--healthbench_holdout", "1", "--healthbench_validation", "1", "--per_device_train_batch_size", "4",
                     "--num_generations", "4", "--per_device_eval_batch_size", "4", "--cat_judge_base_url", judge_url,
                     "--cat_judge_cache_path", str(tmp_path / "judge_cache.jsonl"),
                     "--cat_length_penalty_tokens", "12",
                     "--save_strategy", "steps")  # as written: early stopping needs the checkpoints (none in 1 step)  # 750 of 1024 tokens, shrunk with the completion length
    assert result["steps"] == 1
    step = [h for h in result["history"] if "cat/anchor_completion_tokens" in h][0]
    assert step["cat/anchor_completion_tokens"] > 0
