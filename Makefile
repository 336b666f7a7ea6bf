# Two commands for a user: `make demo` (the main job: `torchstep compare`) and `make test` (the test suite).
# Both create .venv on first use. torch is pinned to 2.13.0 for development: it is the
# oracle every parity test compares against.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/torchstep compare

test: venv
	$(BIN)/python -m pytest -q

.PHONY: venv demo test
