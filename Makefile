# tvtelegrambingx: `make up` runs the stack in Docker, `make test` proves it on real servers.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
EXECUTOR_BENCH_ARGS ?=

.PHONY: help venv test test-unit test-integration test-e2e run up down logs bench db-snapshot lint fault-report soak clean

help:
	@echo "make up      run the whole stack with docker compose (paper mode; creates .env from .env.example if missing)"
	@echo "make test    create .venv, make sure RabbitMQ answers, start a test MongoDB, run every test"
	@echo "make run     run the stack on local servers without Docker (paper trading at the simulator)"
	@echo "make down    stop the docker compose stack;  make logs [SERVICE=executor]  follow its logs"
	@echo "make bench   benchmarks (not tests): the ingress and alert-to-order latency beside baselines"
	@echo "make db-snapshot  copy the database to backups/ before a data fix (docs/RUNBOOK.md)"
	@echo "make lint    pyflakes over the code and the tests"
	@echo "make fault-report  the fault suite, then its table (README);  make soak  the fault suite 5 times in a row"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# The tests start their own MongoDB-compatible server (SecantusDB) on a free port and stop it at the end;
# RabbitMQ is reused when it runs, else started (or installed) here. Each test gets a fresh vhost.
# A broker started here is stopped again afterwards, whatever pytest's outcome and also when ensure-rabbitmq.sh
# fails after starting one; the first failure's exit status is kept.
RABBIT_MARK := .run/rabbitmq-started-by-make-test

test: venv
	status=0; ./ops/scripts/ensure-rabbitmq.sh --mark $(RABBIT_MARK) || status=$$?; \
	if [ $$status -eq 0 ]; then $(VENV)/bin/pytest $(PYTEST_ARGS) || status=$$?; fi; \
	./ops/scripts/stop-rabbitmq.sh $(RABBIT_MARK); exit $$status

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv
	./ops/scripts/ensure-rabbitmq.sh
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv
	./ops/scripts/ensure-rabbitmq.sh
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

run: venv
	./ops/scripts/ensure-rabbitmq.sh
	$(PY) ops/scripts/run_local.py

# Benchmarks, not tests: the ingress beside two bare aiohttp handlers under wrk (BENCH_ARGS="--duration 30"), then
# alert-to-order latency at a steady 200 alerts/s beside ccxt's create_order alone (EXECUTOR_BENCH_ARGS="--rate 100"),
# then the notifier under Telegram's limits (NOTIFIER_BENCH_ARGS="--burst 2000"); last, one report of the three:
# a table and bench/out/report.png. wrk comes from Debian's package (wrk 4.1.0) when missing; matplotlib from the
# `bench` extra.
NOTIFIER_BENCH_ARGS ?=
bench: venv
	./ops/scripts/ensure-rabbitmq.sh
	@command -v wrk >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; }
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install --quiet -e '.[dev,bench]'
	rm -f bench/out/ingress.json bench/out/executor.json bench/out/notifier.json  # the report is of this run only
	$(PY) -m tests.bench.ingress_bench $(BENCH_ARGS)
	$(PY) -m tests.bench.executor_bench $(EXECUTOR_BENCH_ARGS)
	$(PY) -m tests.bench.notifier_bench $(NOTIFIER_BENCH_ARGS)
	$(PY) -m tests.bench.report

# A fresh clone runs in paper mode at once: .env starts as a copy of .env.example (paper trading at the simulator,
# placeholder secrets). Fill in real values before leaving paper mode.
up:
	@test -f .env || { cp .env.example .env; echo "created .env from .env.example (paper mode; change the change-me values)"; }
	docker compose up --build

down:
	docker compose down

SERVICE ?=
logs:
	docker compose logs --follow --tail=200 $(SERVICE)

# Before a data fix. Under docker compose (the database is not published): mongodump inside the mongodb container,
# as a gzipped archive (`mongorestore --archive=<file> --gzip` reads it). Otherwise (make run, systemd, MONGO_URI
# set): ops/scripts/db_snapshot.py writes mongodump's directory layout (`mongorestore --dir <snapshot>`).
MONGO_DB ?= tvtb
BACKUP_DIR ?= backups
db-snapshot: venv
	@if [ -z "$$MONGO_URI" ] && command -v docker >/dev/null 2>&1 && [ -n "$$(docker compose ps -q --status running mongodb 2>/dev/null)" ]; then \
		mkdir -p $(BACKUP_DIR); file=$(BACKUP_DIR)/$(MONGO_DB)-$$(date -u +%Y%m%dT%H%M%SZ).archive.gz; \
		docker compose exec -T mongodb mongodump --quiet --db $(MONGO_DB) --archive --gzip > "$$file" || { rm -f "$$file"; exit 1; }; \
		echo "{\"snapshot\": \"$$file\", \"database\": \"$(MONGO_DB)\"}"; \
	else $(PY) ops/scripts/db_snapshot.py --db $(MONGO_DB) --backups $(BACKUP_DIR); fi

# The fault suite (part of `make test`) with each scenario's books written down, then the README's table of them.
fault-report: venv
	./ops/scripts/ensure-rabbitmq.sh
	mkdir -p bench/out && rm -f bench/out/faults.jsonl
	FAULT_REPORT=bench/out/faults.jsonl $(VENV)/bin/pytest -q -p no:cacheprovider tests/faults
	$(PY) -m tests.faults.report bench/out/faults.jsonl

# Soak: the fault suite SOAK_ROUNDS times in a row (5 by default, about 12 minutes), stopping at the first failure;
# races that one run misses show up over rounds. Then the table of every round together. Not part of `make test`.
SOAK_ROUNDS ?= 5
soak: venv
	./ops/scripts/ensure-rabbitmq.sh
	mkdir -p bench/out && rm -f bench/out/soak.jsonl
	for round in $$(seq 1 $(SOAK_ROUNDS)); do \
		echo "soak: round $$round of $(SOAK_ROUNDS)"; \
		FAULT_REPORT=bench/out/soak.jsonl $(VENV)/bin/pytest -q -p no:cacheprovider tests/faults || exit 1; \
	done
	$(PY) -m tests.faults.report bench/out/soak.jsonl --total

lint: venv
	$(VENV)/bin/pyflakes services shared tests ops

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .run
