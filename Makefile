# The project's commands. `make help` lists them.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORAGE_DIR ?= ./data
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint typecheck proto check-proto bench chaos soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

run: $(STAMP) ## Run a node on the local default sink (data under ./data)
	$(BIN)/ingestor serve --storage-dir $(STORAGE_DIR) --node-name local-0 --receivers 0 --max-segment-age 10s

test: $(STAMP) ## Run the whole test suite, slow tests included
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests without the slow ones
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check node cluster tests proto

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

proto: $(STAMP) ## Regenerate node/gen from proto/
	$(BIN)/python proto/generate.py

check-proto: $(STAMP) ## Fail when node/gen is stale
	$(BIN)/python proto/generate.py --check

bench: $(STAMP) ## Benchmarks: throughput and peak memory of the hot paths
	$(BIN)/python -m tests.bench

chaos: $(STAMP) ## Chaos: 20 random faults on 3 nodes (2 receivers, 300 tables, Prometheus), then the delivery oracle (SEED=n replays; SINK=local, SHAPE=narrow)
	$(BIN)/python -m tests.chaos.run --faults 20 $(if $(SEED),--seed $(SEED)) $(if $(SINK),--sink $(SINK)) $(if $(SHAPE),--shape $(SHAPE))

soak: $(STAMP) ## Soak: 30 minutes of load and a restart a minute on 3 nodes; nothing lost, RSS, descriptors, threads flat (MINUTES=n, SINK=clickhouse)
	$(BIN)/python -m tests.chaos.soak --minutes $(or $(MINUTES),30) $(if $(SINK),--sink $(SINK))

clean: ## Remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
