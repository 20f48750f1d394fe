# Two entry points: `make demo` (train the main job on the embedded data) and `make test` (lint + test suite).
# Both create .venv on first use; re-installs only when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export VOXLAB_MIRROR ?= $(abspath ../shared/data)

.PHONY: demo test lint format install clean-runs

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e ".[dev]"
	$(BIN)/python -m pip check
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m experiments.train experiment=asr/ctc_digits $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(ARGS)

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-runs:
	rm -rf runs mlflow.db mlartifacts
