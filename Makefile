# vqjax: `make demo` runs the MNIST pipeline, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= $(if $(VQJAX_DATA_DIR),$(VQJAX_DATA_DIR),$(abspath ../shared/data))
RUNS ?= runs/demo
# Stage 1 trains 2000 steps; the prior is class-conditional and trains 4000
# steps at learning rate 2e-3, the best evaluate.py measured within the
# demo's time (README, "Sample quality").
DEMO_VQVAE_FLAGS ?=
DEMO_PRIOR_FLAGS ?=
DEMO_EVAL_FLAGS ?=

.PHONY: install test demo family benchmark clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

# One pytest-xdist worker per core, at most 4; a test file's tests stay on one
# worker (they share module fixtures: trained runs). TEST_WORKERS=0: in-process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
test: install
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# The MNIST pipeline: VQ-VAE (stage 1), PixelCNN prior on its codes (stage 2),
# samples decoded to pictures, then the sample-quality numbers (evaluate.py).
# Re-running resumes/skips finished stages.
demo: install
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) train_vqvae.py --config=configs/mnist_vqvae.py \
	  --workdir=$(RUNS)/vqvae $(DEMO_VQVAE_FLAGS)
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) train_prior.py --config=configs/mnist_prior.py:conditional \
	  --workdir=$(RUNS)/prior --config.vqvae_workdir=$(RUNS)/vqvae $(DEMO_PRIOR_FLAGS)
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) sample.py --workdir=$(RUNS)/prior --num=64
	@echo "Pictures:"
	@echo "  reconstructions: $(RUNS)/vqvae/images/"
	@echo "  samples:         $(RUNS)/prior/samples/"
	VQJAX_DATA_DIR=$(DATA_DIR) $(PY) evaluate.py --workdir=$(RUNS)/prior $(DEMO_EVAL_FLAGS)

# The model family on MNIST, for the README's side-by-side table (long: about
# an hour and a half on 2 CPU cores): AE, VAE, VQ-VAE-2 and its two priors,
# multi-stage samples, then evaluate.py on each. Reuses $(RUNS)/vqvae and
# $(RUNS)/prior from `make demo` when they are there.
FAMILY = VQJAX_DATA_DIR=$(DATA_DIR) $(PY)
family: install
	$(FAMILY) train_vqvae.py --config=configs/mnist_vae.py --workdir=$(RUNS)/vae
	$(FAMILY) train_vqvae.py --config=configs/mnist_vae.py:ae --workdir=$(RUNS)/ae
	$(FAMILY) train_vqvae.py --config=configs/mnist_vqvae2.py --workdir=$(RUNS)/vqvae2
	$(FAMILY) train_prior.py --config=configs/mnist_vqvae2_prior.py:top \
	  --workdir=$(RUNS)/vqvae2_top --config.vqvae_workdir=$(RUNS)/vqvae2
	$(FAMILY) train_prior.py --config=configs/mnist_vqvae2_prior.py:bottom \
	  --workdir=$(RUNS)/vqvae2_bottom --config.vqvae_workdir=$(RUNS)/vqvae2
	$(FAMILY) sample.py --workdir=$(RUNS)/vqvae2_bottom --top_workdir=$(RUNS)/vqvae2_top --num=64
	$(FAMILY) evaluate.py --workdir=$(RUNS)/vae
	$(FAMILY) evaluate.py --workdir=$(RUNS)/ae
	$(FAMILY) evaluate.py --workdir=$(RUNS)/vqvae2_bottom --top_workdir=$(RUNS)/vqvae2_top

benchmark: install
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
