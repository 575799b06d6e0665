# `make demo`: set up and run the whole pipeline on the bundled sample.
# `make test`: set up and run the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup browser demo test test-slow

$(BIN)/dva: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/dva

setup: $(BIN)/dva

demo: setup
	test -f data/raw/carphone.mp4 || dva sample data/raw/carphone.mp4
	dvc repro

# Headless Chromium and its driver for the review-page test (tests/test_report.py); installed quietly where
# apt can (CI runs as root on Debian), otherwise that test skips and says how to install them.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "note: no Chromium; tests/test_report.py's browser test will skip (apt-get install -y chromium chromium-driver)"

test: setup browser
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow
