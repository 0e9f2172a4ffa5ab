# The two commands of the README. Both create (or reuse) .venv with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test venv lint report

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# Set up and run the main job: the embedded default (tiny offline models, CPU).
run: venv
	$(BIN)/snakemake --profile workflow/profiles/default all

# Set up and run the whole test suite.
test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/snakemake --lint

report: venv
	$(BIN)/snakemake --profile workflow/profiles/default --report results/report/snakemake-report.html all
