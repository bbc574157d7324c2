# `make demo` and `make test` are the only commands a fresh machine needs:
# each creates .venv and installs the project with its dev extras first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-http bench-peers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sluicegate demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python benchmarks/sqlite_vs_huey.py

bench-http: $(STAMP)
	$(BIN)/python benchmarks/http_enqueue.py

# Needs redis-server on PATH and PostgreSQL on 127.0.0.1:5432; see BENCHMARKS.md.
bench-peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[peers]'
	$(BIN)/python benchmarks/redis_peers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
