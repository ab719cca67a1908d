# Pyrocast: `make demo` runs the system end to end; `make test` runs the tests; `make bench` the benchmarks.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean test-deps

setup: $(STAMP)

# The venv is rebuilt when the dependencies change; every install goes through the one constraints file.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

test-deps:
	@bash scripts/test-deps.sh

demo: setup
	$(BIN)/pyrocast demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup test-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow and not browser"

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf .pyrocast .pytest_cache
