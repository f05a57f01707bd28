# vitprune: `make reproduce` and `make test` are the two commands a fresh clone needs;
# `make study` is the seeded study the README's results come from (SEEDS fine-tune seeds).
# All create .venv on first use and install the package (with its pinned torch) into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vitprune-installed
PROFILE ?= fmnist
SEEDS ?= 3
FIGURES_SEEDS ?= 1
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup reproduce study baseline test test-full gpu-check figures lab book clean distclean data-package

setup: $(STAMP)

# Re-install whenever pyproject.toml or constraints.txt (the study's exact versions) changes; the
# stamp is written only after success. pip byte-compiles the ~15k installed files one at a time
# (about 45 s of a fresh set-up); compileall writes the same files on every core (a few files for
# newer Pythons do not compile, hence || true).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --no-compile -q -c constraints.txt -e '.[dev]'
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

# Debian ships Fashion-MNIST as IDX files; install them when we can (root + apt). Without
# them notebook 00 falls back to the HF hub and, offline, says how to get the data.
data-package:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist with apt-get"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
		echo "apt-get could not install dataset-fashion-mnist; notebook 00 will try the HF hub"; \
	else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for offline data (else the HF hub is used)"; fi

reproduce: setup data-package
	$(BIN)/python -m vitprune run --profile $(PROFILE)

# the fine-tunes (notebooks 02-04) over SEEDS seeds from the one released baseline, with the runs
# params/$(PROFILE)/study.yaml adds (every control, the study's linear rate, EViT and ToMe fine-tuned at
# DynamicViT rho 0.7's MACs); seed 0 of make reproduce's
# runs is reused when up to date; Table 1 and figures go to figures/$(PROFILE)-$(SEEDS)seeds/
study: setup data-package
	$(BIN)/python -m vitprune run --profile $(PROFILE) --seeds $(SEEDS) --study

# trains the profile's baseline once (notebook 01 with params/$(PROFILE)/baseline.yaml) under runs/baseline/;
# nothing is released until `python -m vitprune release runs/baseline/$(PROFILE)/01_deit_baseline` (it says so)
baseline: setup data-package
	$(BIN)/python -m vitprune baseline --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest

# the slow tests and the ImageNet profile rehearsed on CPU (all six notebooks, 1 vs 2 processes); CI runs it too
test-full: setup
	$(BIN)/python -m pytest -m "slow or rehearsal"

# the first command on a GPU machine: smoke profile on 1 process and on every GPU, DeiT-B throughput
gpu-check: setup data-package
	$(BIN)/python -m vitprune gpu-check

# notebook 05 again on the existing runs (FIGURES_SEEDS=3: make study's Table 1 and figures)
figures: setup
	$(BIN)/python -m vitprune run --profile $(PROFILE) --only 05_analysis --force --seeds $(FIGURES_SEEDS) \
		$(if $(filter-out 1,$(FIGURES_SEEDS)),--study)

# JupyterLab at the repository root (notebooks/ shown first), the pipeline's kernel settings,
# notebooks/ saved as committed; as root too (vitprune/cli/lab.py)
lab: setup
	$(BIN)/python -m vitprune lab

# the executed study as static pages: book/$(PROFILE)/index.html (after make reproduce)
book: setup
	$(BIN)/python -m vitprune book --profile $(PROFILE)

clean:
	rm -rf runs cache book .pytest_cache

distclean: clean
	rm -rf $(VENV)
