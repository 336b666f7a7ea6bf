# Commands for a user: `make demo` (the main job: `torchstep compare`), `make test` (the test suite), `make fuzz` (the optimizer differential fuzzer over more seeds).
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

# the optimizer differential fuzzer over more seeds than CI's: make fuzz SEEDS=0-2000 [CLASSES=Adam,SGD]
SEEDS ?= 0-2000
CLASSES ?=
fuzz: venv
	TORCHSTEP_FUZZ_SEEDS=$(SEEDS) TORCHSTEP_FUZZ_CLASSES=$(CLASSES) $(BIN)/python -m pytest -q tests/differential

.PHONY: venv demo test fuzz
