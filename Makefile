# digest: `make run` starts the service on the embedded default; `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BENCH_READERS ?= 10000  # `make bench BENCH_READERS="10000 100000"` adds the 100k rows

.PHONY: run test lint typecheck pytest test-long soak bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(BIN)/.installed

# doiuse-email for the caniemail checks, pinned by its lock file (skipped, with a note, without npm).
tools/doiuse/node_modules/.installed: tools/doiuse/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tools/doiuse --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the doiuse-email checks will skip"; fi

## Install, create or upgrade the schema, ingest seeds/, and serve (web, scheduler, worker, capture SMTP).
run: $(BIN)/.installed
	$(BIN)/digest init
	$(BIN)/digest run

## Lint, type-check and run the whole test suite (PostgreSQL tests skip with a reason when none answers).
test: $(BIN)/.installed-test lint typecheck pytest

lint: $(BIN)/.installed-test
	$(BIN)/ruff check src tests $(wildcard bench)

typecheck: $(BIN)/.installed-test
	$(BIN)/mypy src

pytest: $(BIN)/.installed-test tools/doiuse/node_modules/.installed
	$(BIN)/python -m pytest -q -rs --durations=15

## The long crash and multi-worker runs: 20 random SIGKILL runs over 5,000 readers, and three
## workers delivering 20,000 messages on PostgreSQL (about half an hour).
test-long: $(BIN)/.installed-test
	DIGEST_LONG=1 $(BIN)/python -m pytest -q -rs -s tests/test_crash.py

## `digest run` and `digest worker` on a throwaway PostgreSQL cluster for half an hour of random
## faults (outages, relay trouble, breaker trips, pauses, kills, unsubscribes); prints its figures.
soak: $(BIN)/.installed-test
	DIGEST_SOAK_SECONDS=$${DIGEST_SOAK_SECONDS:-1800} $(BIN)/python -m pytest -q -rs -s tests/test_soak.py -k random

## Benchmarks (not tests): see bench/README.md.
bench: $(BIN)/.installed-test
	$(BIN)/python bench/delivery_bench.py --readers $(BENCH_READERS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
