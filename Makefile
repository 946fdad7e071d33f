# Two entry points, each setting itself up from nothing:
#   make run    the main job (the side-by-side comparison)
#   make test   the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test summary bench clean

# MXNet 1.9.1 (the last release) declares numpy<2 but runs on NumPy 2 with the names that
# vgg_gluon/__init__.py restores (docs/environment.md): it is installed on its own, without its
# requirements, after everything else; its one runtime requirement, requests, is in pyproject.toml.
MXNET := mxnet==1.9.1

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps '$(MXNET)'
	$(PY) -c 'import vgg_gluon, mxnet'
	@touch $@

# The side-by-side training run: the CPU preset (VGG-11/4 at 32 px, one epoch, about 4 minutes
# for the three on 2 cores) in PyTorch, Gluon and Flax, one after another; report in runs/compare/.
# ARGS come last, so they win (e.g. ARGS='--max-steps 100' for a quick look).
# Fashion-MNIST from ../shared/fashion-mnist where it is (development machines, CI); elsewhere
# the loader downloads it (or falls back to its bundled sample, and says so).
SHARED_DATA := $(wildcard $(CURDIR)/../shared/fashion-mnist)
run: $(VENV)/.installed
	$(PY) -m common.compare --preset cpu $(if $(SHARED_DATA),--data-dir $(SHARED_DATA)) $(ARGS)

summary: $(VENV)/.installed
	$(PY) -m common.summary $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
