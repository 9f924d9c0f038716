# cat-trl: every target sets up .venv first (scripts/setup.sh), so each works on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart eval bench test test-slow ci clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

## CaT-RL on the embedded SmolLM2-135M-Instruct, built-in data, CPU, W&B offline (minutes).
quickstart: setup
	$(VENV)/bin/cat-trl train yaml/quickstart.yaml

## Test-time CaT vs selection baselines on the embedded model, a MATH-500 subset, CPU (~6 min on 2 cores).
eval: setup
	$(VENV)/bin/cat-trl eval yaml/eval/quickstart-cpu.yaml

## CaT's overhead over plain GRPO and the other performance figures (README "Performance"); --quick for CI.
bench: setup
	$(PY) benchmarks/run.py

## Default test suite (CPU, offline, ~3 min on 2 cores).
test: setup
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider

## Slow tests: the quickstart itself, GGUF conversion from scratch.
test-slow: setup
	$(PY) -m pytest -m slow -q -p no:cacheprovider

ci: test test-slow

clean:
	rm -rf $(VENV) outputs wandb .pytest_cache
