# The two commands: `make demo` runs the main job on the embedded stack, `make test` runs the
# tests. Each bootstraps .venv from the locked requirements on a machine with only Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.9
PYTEST_ARGS ?=

.PHONY: demo test lint bench lock clean

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements/lock.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)  ## start the embedded stack, run the crystallography pipeline demo, stop everything
	FEDCOMPUTE_HOME=$${FEDCOMPUTE_HOME:-$$HOME/.fedcompute} $(BIN)/fedcompute dev --run "$(BIN)/python -m fedcompute_ssx demo"

test: $(STAMP)  ## lint, then the whole suite in two lanes side by side (tests/lanes.py): real Valkey, Dask, Prefect, Airflow; Slurm if running
	$(BIN)/ruff check .
	$(BIN)/python -m tests.lanes $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)  ## the throughput benchmark (README: Benchmarks)
	$(BIN)/python bench/throughput.py

lock:  ## re-resolve the pinned environment, on purpose
	$(BIN)/uv pip compile pyproject.toml --all-extras --python-version 3.11 -o requirements/lock.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
