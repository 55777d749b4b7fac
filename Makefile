# vqjax: `make demo` runs the MNIST pipeline, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(if $(VQJAX_DATA_DIR),$(VQJAX_DATA_DIR),$(abspath ../shared/data))
RUNS ?= runs/demo

.PHONY: install test demo benchmark clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) -m pytest tests

demo: install
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) train_vqvae.py --config=configs/mnist_vqvae.py \
	  --workdir=$(RUNS)/vqvae
	@echo "Reconstructions: $(RUNS)/vqvae/images/"

benchmark: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
