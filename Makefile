# The two commands of the README: `make demo` (the main job on the bundled demo
# data) and `make test` (the test suite). Both create .venv on Python >= 3.12.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

# Find a Python >= 3.12: $PYTHON, python3.12/3.13 on PATH, then pyenv's versions.
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python 2>/dev/null); do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { command -v $$p; break; }; done)

.PHONY: demo test lint venv

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.12 found; install one or set PYTHON=/path/to/python3.12" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,simulate,io]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/prenet-jax demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# Lint and format check (ruff, configured in pyproject.toml); .ci/run runs it first.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
