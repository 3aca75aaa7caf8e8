# The two commands a newcomer types: `make demo` and `make test`. Each builds .venv when it is
# missing or older than pyproject.toml, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-gpu lint bench clean system-packages

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
	$(BIN)/mypy

# The integration tests run Debian's PostgreSQL (the service's store, MLflow's backend) and
# Chromium (the MLflow UI in a browser); installed only when missing.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: lint system-packages
	$(BIN)/python -m pytest -m "not gpu" --durations=25

test-gpu: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m gpu

bench: $(VENV)/.installed
	$(BIN)/python bench/losses.py
	$(BIN)/python bench/mixing.py
	$(BIN)/python bench/throughput.py --threads 2
	$(BIN)/python bench/sweep_overhead.py
	$(BIN)/python bench/data_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
