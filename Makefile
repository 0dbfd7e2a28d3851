# Entry points. Every target creates .venv on first use and installs the project into it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo test fuzz lint dev worker bench screenshots clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

$(DAGSTER_HOME):
	@mkdir -p $(DAGSTER_HOME)

## The main job on the embedded default (SQLite registry, local model store, local Dagster instance).
demo: $(STAMP) $(DAGSTER_HOME)
	$(BIN)/aivo-fl demo

## Every test, one worker per core (PostgreSQL tests skip locally without a server; CI makes them mandatory).
## A worker takes whole test modules (--dist loadscope), so a module's shared fixture is built once.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadscope

## The property-based tests (tests/fuzz) at nightly size: thousands of examples each, minutes.
## `make test` runs the same tests with the quick profile.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=nightly $(BIN)/python -m pytest -q -p no:xdist tests/fuzz

lint: $(STAMP)
	$(BIN)/ruff check .

## The Dagster UI and daemon with this project's code location (`[tool.dg]` in pyproject.toml), on
## http://127.0.0.1:3000. VIRTUAL_ENV tells `dg` the project's venv is the active one.
dev: $(STAMP) $(DAGSTER_HOME)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg dev -h 127.0.0.1 -p 3000

## A Celery worker for the runs Dagster launches when CELERY_BROKER_URL is set (one per host, or more).
## Needs the deployment's settings (.env), DAGSTER_HOME with deploy/dagster.yaml, a shared model store.
CELERY_QUEUE ?= dagster
worker: $(STAMP) $(DAGSTER_HOME)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml -q $(CELERY_QUEUE)

## Screenshots of the Dagster UI on the demo's instance (`make demo` first) into docs/screenshots/:
## a read-only webserver and Debian's headless Chromium (apt-get install -y chromium), both stopped after.
screenshots: $(STAMP) $(DAGSTER_HOME)
	$(BIN)/python scripts/screenshots.py

## Benchmarks: prints a table, writes benchmarks/results/*.json. The aggregation benchmark's Flower
## baseline runs in .venv-flower (flwr 1.42.0; its pins conflict with Dagster's), created on first use.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-flower .dagster_home
