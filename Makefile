# rtops: `make run` starts the suite, `make test` tests it. Both create .venv themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
PYTEST_ARGS ?=
DEMO_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help install run demo test lint format schemas bench bench-qa bench-billing bench-pages bench-documents bench-scp-concurrent clean audit sbom

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.synced: pyproject.toml uv.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "rtops needs Python 3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@# --inexact keeps uv itself, which the lock file does not list. Byte code compiled now:
	@# where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile pydicom & co.
	@# at each start (2-3x slower, and the SCP's RSS 40-50 MB higher while it starts).
	$(BIN)/uv sync --frozen --inexact --quiet --compile-bytecode
	@touch $@

install: $(BIN)/.synced ## create .venv and install the locked dependencies
	@# our own modules' byte code as well (0.2 s when nothing changed; see .synced above)
	@$(BIN)/python -m compileall -q -j 0 services shared bench tests > /dev/null

run: install ## start NATS (embedded unless RTOPS_NATS_URL), migrate, run every service
	$(BIN)/rtops run

demo: install ## send a simulated department's traffic to the running suite (make run first)
	$(BIN)/rtops demo $(DEMO_ARGS)

test: install ## run the whole test suite (DCMTK tests skip where storescu is absent)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install ## ruff, formatting and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

schemas: install ## export event JSON Schemas to docs/events/
	$(BIN)/rtops schemas --out docs/events

bench: install ## SCP benchmark against DCMTK's storescp (needs dcmtk)
	$(BIN)/python -m bench.scp_bench

clean: ## remove .venv and var/
	rm -rf $(VENV) var

bench-qa: install ## QA tracker replay benchmark (RTOPS_DATABASE_URL for PostgreSQL)
	$(BIN)/python -m bench.qa_bench --days 20

bench-billing: install ## billing: 5,000 courses, 100,000 claim lines, consumer on SQLite and PostgreSQL
	$(BIN)/python -m bench.billing_bench

bench-pages: install ## staff pages benchmark, 60 days (--days 250: the year; RTOPS_DATABASE_URL)
	$(BIN)/python -m bench.pages_bench --days 60

bench-documents: install ## documents: a year's 3,000 courses, plans and checklist query p95, letters/s (SQLite and PostgreSQL)
	$(BIN)/python -m bench.documents_bench

audit: install ## pip-audit over the locked requirements (red on an advisory with a fix)
	$(BIN)/python .ci/audit.py

sbom: install ## CycloneDX SBOM of the runtime lock (what the image ships) to var/ci/sbom.cdx.json
	@mkdir -p var/ci
	$(BIN)/uv export --frozen --no-hashes --no-dev --no-emit-project --quiet -o var/ci/requirements.runtime.txt
	$(BIN)/cyclonedx-py requirements --of JSON --output-reproducible -o var/ci/sbom.cdx.json var/ci/requirements.runtime.txt

bench-scp-concurrent: install ## SCP: ten storescu senders at once against 1 and N processes (needs dcmtk)
	$(BIN)/python -m bench.scp_concurrent
