# The two commands a newcomer types: `make demo` and `make test`. Each builds .venv when it is
# missing or older than pyproject.toml, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-gpu lint bench clean system-packages tl-pretrain

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

# The source model of search_spaces/tl_quick.yaml: smallnet trained on five CIFAR-10 classes
# (search_spaces/trials/tl_source.yaml: 8 epochs of 25,000 images, 84 % top-1 on its classes;
# 10 minutes measured on 2 CPU cores shared with other jobs), its weights (the 5-class
# head kept) written to $(TL_WEIGHTS), where the spec's relative weights path points. The data
# root is $DMSWEEP_DATA_ROOT (default ~/dmsweep-data); the shared CIFAR-10 JPEGs are unpacked
# into its cifar10/ folder first when that is missing.
DMSWEEP_DATA_ROOT ?= $(HOME)/dmsweep-data
CIFAR10_ARCHIVE   ?= ../shared/data/cifar10-jpg.tar.gz
TL_WEIGHTS        := $(DMSWEEP_DATA_ROOT)/weights/smallnet_cifar10_source5.pt
TL_RUN            := $(DMSWEEP_DATA_ROOT)/weights/.tl-pretrain-run

tl-pretrain: $(VENV)/.installed
	@test -d "$(DMSWEEP_DATA_ROOT)/cifar10/train" || { \
		echo "unpacking $(CIFAR10_ARCHIVE) into $(DMSWEEP_DATA_ROOT)/cifar10"; \
		mkdir -p "$(DMSWEEP_DATA_ROOT)/cifar10" && tar -xzf "$(CIFAR10_ARCHIVE)" \
			-C "$(DMSWEEP_DATA_ROOT)/cifar10" --strip-components=1 --no-same-owner; }
	rm -rf "$(TL_RUN)"
	DMSWEEP_DATA_ROOT="$(DMSWEEP_DATA_ROOT)" $(BIN)/dmsweep train \
		search_spaces/trials/tl_source.yaml --out "$(TL_RUN)"
	$(BIN)/python -m trainers.export "$$(ls -d "$(TL_RUN)"/checkpoint_* | sort | tail -n 1)" \
		"$(TL_WEIGHTS)"
	rm -rf "$(TL_RUN)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
