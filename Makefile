# Two entry points, each of which sets up a fresh machine first:
#   make demo   -> creates .venv, installs wdmoe, runs `wdmoe demo`
#   make test   -> creates .venv, installs wdmoe + dev tools, runs ruff, mypy and pytest
# TORCH pins the CPU wheel that project machines carry; on a GPU host: make demo TORCH=torch
# CONSTRAINTS pins every other package to the versions the suite last passed with, so a dependency's new release
# cannot change what a fresh setup (or CI) installs; `make lock` refreshes it; CONSTRAINTS= installs the newest.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
EXTRAS := model,serve,ray,dev,serve-test,sionna,bench,ensemble
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY := error

.PHONY: setup sysdeps demo test lint bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	touch $@

# The newest versions that pyproject.toml allows, installed in a scratch venv and written to constraints.txt
# (torch stays with TORCH). Run `make test` after it: the file is only as good as the suite that passed with it.
lock:
	rm -rf .venv-lock && $(MAKE) setup VENV=.venv-lock CONSTRAINTS=
	{ echo "# pip constraints: the versions the suite passed with (make lock writes this file; see the Makefile)"; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i -e '^torch==' -e '^-e '; } > constraints.txt
	rm -rf .venv-lock

demo: setup
	$(BIN)/wdmoe demo

# Debian's chromium for the dashboard's headless-browser test (installed when we are root with apt-get).
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium is not installed; the dashboard browser test will be skipped"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# The Ray cluster tests run in a pytest process of their own: their drivers, nodes and object stores never share
# a process (or memory pressure) with the rest of the suite. Their node-kill test shares one session cluster with
# the other failover tests and has failed under load after them while passing alone (a known flake, issue #5):
# the tests that failed get one more run, on a fresh cluster; a second failure fails CI.
test: sysdeps lint
	$(BIN)/pytest --ignore=tests/integration/ray
	$(BIN)/pytest tests/integration/ray || $(BIN)/pytest tests/integration/ray --last-failed

bench: setup
	$(BIN)/python bench/runtime_overhead.py
	$(BIN)/python bench/policy_speed.py

clean:
	rm -rf $(VENV) .venv-lock .pytest_cache .mypy_cache .ruff_cache
