# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# uv installs the locked dependencies (the same set as pip: ~5 s instead of ~50 s here)
UV     := uv==0.13.8

.PHONY: help install run test test-unit test-integration lint check-schemas bench bench-workers bench-scale bench-analytics bench-reads bench-rebuild profile-workers drill drill-ci lock up down status clean-stack

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (found " + sys.version.split()[0] + "): set PYTHON=/path/to/python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(UV)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the locked dependencies

run: install ## start the stack, the API and the workers in the foreground (Ctrl-C stops all)
	$(BIN)/mohallamart run

test: install ## run every test (starts the local stack for the integration tests)
	$(BIN)/python -m pytest --durations=40

test-unit: install ## unit tests only (no network)
	$(BIN)/python -m pytest tests/unit --durations=5

test-integration: install ## integration tests against the local stack
	$(BIN)/python -m pytest tests/integration --durations=40

lint: install ## ruff, the dependency direction (import-linter) and mypy
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

check-schemas: install ## the schema compatibility gate (git baseline; and the registry if it answers)
	$(BIN)/mohallamart schemas check $(if $(REGISTRY),,--no-registry)

bench: install ## the ingestion benchmark (needs the stack up: make up)
	$(BIN)/mohallamart bench ingest

bench-workers: install ## the workers' benchmark, topic -> PostgreSQL (needs the stack up)
	$(BIN)/mohallamart bench workers

bench-scale: install ## scale-out: 1 projections worker vs 3 in a group, CPU/event, idle lag (stack up)
	$(BIN)/mohallamart bench scale-out

profile-workers: install ## where the projections worker's CPU goes per event, fresh and with history (stack up)
	$(BIN)/mohallamart bench profile-workers

bench-analytics: install ## the analytics role beside plain confluent-kafka and faust's tumbling table (stack up)
	$(BIN)/mohallamart bench analytics

bench-reads: install ## the read side's benchmark: cache, search, reindex, live clients (stack up)
	$(BIN)/mohallamart bench reads

bench-rebuild: install ## each rebuild (postgres, redis, search) beside a raw baseline, 1M events (stack up)
	$(BIN)/mohallamart bench rebuild

# The drill runs on a stack of its own (.stack/drill: 3 controllers, 3 brokers, RF 3, min ISR 2,
# clients over SASL_SSL)
# with the test profile's short session timeout and stall watchdog (45 s, as the tests'); stop
# `make run`'s stack first (same ports).
DRILL_ENV := STACK_DIR=.stack/drill STACK_KAFKA_BROKERS=3 STACK_KAFKA_SECURITY=sasl_ssl \
	KAFKA_REPLICATION_FACTOR=3 KAFKA_MIN_INSYNC_REPLICAS=2 KAFKA_SESSION_TIMEOUT_MS=3000 KAFKA_HEARTBEAT_INTERVAL_MS=1000 \
	KAFKA_REBALANCE_TIMEOUT_MS=6000 WORKER_STUCK_PARTITION_S=45

drill: install ## the fault drill, every row, 3-broker profile (its own stack; report: drill-report.md)
	$(DRILL_ENV) $(BIN)/mohallamart drill --report drill-report.md $(ROWS)

drill-ci: install ## one short row per fault kind (what CI runs)
	$(DRILL_ENV) $(BIN)/mohallamart drill --short --report drill-report.md \
		leader controller isr worker-kill worker-pause clock postgres poison duplicate rebuild

lock: ## re-pin requirements.lock from pyproject.toml (needs network)
	$(BIN)/python -m pip install --quiet $(UV)
	$(BIN)/uv pip compile --python-version 3.11 --extra dev --no-header --annotation-style line pyproject.toml -o requirements.lock

up: install ## mohallamart stack up
	$(BIN)/mohallamart stack up

down: install ## mohallamart stack down
	$(BIN)/mohallamart stack down

status: install ## mohallamart stack status
	$(BIN)/mohallamart stack status

clean-stack: down ## stop the stack and delete its data (.stack/)
	rm -rf .stack
