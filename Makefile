# The few commands people run daily. Each target sets up .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## demo: the CPU smoke sweep (rope x mlp_lr x 2 seeds, tiny model), ending in results/smoke/report.md
demo: $(VENV)/.installed
	$(PY) -m harness.train -m experiment=smoke

# The suite on every core (at most 4 workers): most of the slow tier is one process waiting on its
# imports, so two workers on a 2-core machine halve the wall time. A file's tests stay on one worker
# (--dist loadfile), so a module's shared reference run is trained once. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile

## test: the whole test suite, the end-to-end smoke tier included
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_PARALLEL)

## test-fast: unit tests only (about 3 minutes on 2 cores)
test-fast: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs results/smoke .pytest_cache
