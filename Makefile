# `make demo`: set up and run the whole pipeline on the bundled sample.
# `make test`: set up and run the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test test-slow

$(BIN)/dva: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/dva

setup: $(BIN)/dva

demo: setup
	test -f data/raw/carphone.mp4 || dva sample data/raw/carphone.mp4
	dvc repro

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow
