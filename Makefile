# The two commands a newcomer types: `make demo` and `make test`. Each builds .venv when it is
# missing or older than pyproject.toml, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-gpu lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record what was installed into the venv; pyproject.toml changes trigger a reinstall.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/dmsweep run search_spaces/smoke.yaml

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -m "not gpu"

test-gpu: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m gpu

bench: $(VENV)/.installed
	$(BIN)/python bench/losses.py
	$(BIN)/python bench/mixing.py
	$(BIN)/python bench/throughput.py --threads 2
	$(BIN)/python bench/sweep_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
