# Salvia: `make run` starts the platform, `make test` runs every check CI runs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: install browser run test test-fast lint typecheck bench clean

install: $(STAMP)

# Studio's browser tests drive Debian's Chromium by path (Playwright's own download is not used).
CHROMIUM := /usr/bin/chromium
browser:
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Reinstalled whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/salvia server --demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install
	$(BIN)/mypy

# The backends' tests run when their servers answer on this machine (they do in CI).
test: lint typecheck browser
	@export SALVIA_TEST_POSTGRES_URL=$$($(BIN)/python -c "import psycopg; psycopg.connect('$(POSTGRES_URL)', connect_timeout=3).close(); print('$(POSTGRES_URL)')" 2>/dev/null); \
	if [ -z "$$SALVIA_TEST_POSTGRES_URL" ]; then echo "PostgreSQL not answering at $(POSTGRES_URL): its tests will be skipped"; fi; \
	$(BIN)/python -m pytest

test-fast: install browser
	$(BIN)/python -m pytest -m "not slow" -x

bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/api_throughput.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
