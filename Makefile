# Two entry points: `make demo` (train the main job on the embedded data) and `make test` (lint + test suite).
# Both create .venv on first use, installing the locked set (requirements.lock); they reinstall only when the
# lock or pyproject.toml changes. `make help` lists every target.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
export VOXLAB_MIRROR ?= $(abspath ../shared/data)

.PHONY: help demo test lint format install lock ui notebooks clean-runs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv==$(UV_VERSION)

$(BIN)/.installed: requirements.lock pyproject.toml $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet --require-hashes -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

install: $(BIN)/.installed  ## create .venv from requirements.lock

lock: $(BIN)/uv  ## re-resolve requirements.lock after changing dependencies in pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
		--quiet -o requirements.lock

demo: $(BIN)/.installed  ## train + test asr/ctc_digits on the embedded data, logged to MLflow (ARGS=overrides)
	$(BIN)/python -m experiments.train experiment=asr/ctc_digits $(ARGS)

lint: $(BIN)/.installed  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## lint, then the pytest suite (ARGS=pytest options)
	$(BIN)/python -m pytest $(ARGS)

format: $(BIN)/.installed  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: $(BIN)/.installed  ## MLflow UI on http://127.0.0.1:5000 over the repository's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000

notebooks: $(BIN)/.installed  ## execute every notebook headless; executed copies go to runs/notebooks/
	$(BIN)/jupytext --sync notebooks/*.py
	MPLBACKEND=Agg $(BIN)/jupyter nbconvert --to notebook --execute --output-dir runs/notebooks notebooks/*.ipynb

clean-runs:  ## delete runs/, mlflow.db and mlartifacts/
	rm -rf runs mlflow.db mlartifacts
