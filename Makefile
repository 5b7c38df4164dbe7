# Two commands do everything on a fresh machine with Python 3.11:
#   make run   - install into .venv, seed the embedded stores and start Dagster on 127.0.0.1
#   make test  - install into .venv and run the whole test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint install

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rlm run

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

# The cheap rung, no server and no browser: tests/unit, plus the contract and lifecycle suites on
# the in-memory fakes (tests/fakes/; their param is named `fakes`, tests/unit's folder `unit`).
# test_interleavings records its runs on a redis-server while it is collected: not here.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/contracts tests/lifecycle $(wildcard tests/unit) \
		--ignore=tests/lifecycle/test_interleavings.py -k "fakes or unit"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Mutation testing (issue 17; ~30 min, not part of CI): writes mutation/RESULTS.json and RESULTS.md.
.PHONY: mutation
mutation: $(STAMP)
	$(VENV)/bin/python mutation/run.py
