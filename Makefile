# Two entry points, each setting itself up from nothing:
#   make run    the main job (the side-by-side comparison)
#   make test   the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test lint docs summary profile bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# The side-by-side training run: the CPU preset (VGG-11/4 at 32 px, one epoch, about 4 minutes
# for the three on 2 cores) in PyTorch, Gluon and Flax, one after another, from the same initial
# weights; report in runs/compare/
# ARGS come last, so they win (e.g. ARGS='--max-steps 100' for a quick look).
# Fashion-MNIST: DATA=PATH passes --data-dir PATH (a folder with the four files). Without it, a
# copy in ../shared/fashion-mnist beside the checkout is used where there is one; else the loader
# reads $$FASHION_MNIST_DIR, else its cache, downloading the files there on first use (offline:
# the bundled sample, and the report says so).
DATA ?= $(wildcard $(CURDIR)/../shared/fashion-mnist)
# make run again redoes the comparison in runs/compare (--overwrite: each earlier run stays until the
# new one's first checkpoint); with ARGS=--resume it continues an interrupted one instead.
run: $(VENV)/.installed
	$(PY) -m common.compare --preset cpu $(if $(DATA),--data-dir $(DATA)) $(if $(findstring --resume,$(ARGS)),,--overwrite) $(ARGS)

summary: $(VENV)/.installed
	$(PY) -m common.summary $(ARGS)

# Where the time and the memory go, layer by layer, in the three frameworks (docs/profile.md):
# VGG-11/4 at 96 px, batch 128 by default; the tables are printed, the JSON and PNG go to runs/profile/.
# E.g. ARGS='--image-size 32 96 224' for the same profile against resolution.
profile: $(VENV)/.installed
	$(PY) -m common.profile $(ARGS)

# Lint and format checks first (ruff, configured in pyproject.toml), then the suite.
test: lint
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# docs/side_by_side.{md,html} and the README's vgg_block snippet, cut from the code
# (tests/test_side_by_side.py fails when they are stale).
docs: $(VENV)/.installed
	$(PY) -m tools.side_by_side

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
