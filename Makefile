# Two commands set up everything on a fresh machine:
#   make demo   - trains the default scenario (8-bit, 4 servers, every layer approximated)
#   make test   - runs the default (fast) test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export OPENBLAS_NUM_THREADS ?= 1
# pytest worker processes (pytest-xdist): one process left a core of the 2-core CPU idle much
# of the time (README, "Testing"); each test file stays in one worker (its fixtures).
# TEST_WORKERS=0 runs the suite in this process. The slow checks run one at a time.
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: venv demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/optinc train --out runs/demo --resume

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments conftest.py
	$(VENV)/bin/ruff format --check src tests benchmarks experiments conftest.py
	$(PYTEST)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks experiments conftest.py
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments conftest.py

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.bench_mesh --out runs/bench
	$(VENV)/bin/python -m benchmarks.bench_train --out runs/bench
	$(VENV)/bin/python -m benchmarks.bench_scale --out runs/bench
	$(VENV)/bin/python -m benchmarks.bench_collective --out runs/bench

clean:
	rm -rf $(VENV) runs
