# Two commands do all the set-up on a fresh machine:
#   make sweep   create .venv (first time only), run the LeNet-5/MLP x regularizer sweep, print the table
#   make test    create .venv (first time only), run the test suite
# make test-cluster (root) brings up a one-node SLURM cluster and a PostgreSQL-backed MLflow server
# (deploy/), runs the tests that need them, and stops both.
# make lint checks the code with ruff (lint and format), as CI and the pre-commit hooks do.
# make bench runs every benchmark (BENCH_ARGS=--smoke for a quick check).
# Afterwards `source .venv/bin/activate` gives the plain python train.py / mlflow ui / python analyze.py.

# The newest supported Python on PATH (a pyenv shim that cannot run counts as absent); PYTHON=... chooses.
PYTHON ?= $(or $(firstword $(foreach p,python3.13 python3.12 python3.11,$(shell $(p) -c '' 2>/dev/null && echo $(p)))),python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SWEEP ?= model=lenet5,mlp regularizer=none,l2,dropout
BENCHMARKS := epoch_throughput data_prep run_overhead grid hardware_efficiency sweep_prep

.PHONY: setup sweep test test-cluster lint bench ui clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(None if (3, 11) <= sys.version_info[:2] <= (3, 13) else "mnist-exp needs Python 3.11, 3.12 or 3.13, not $(PYTHON) (" + sys.version.split()[0] + "): set PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	# compat: the checkout itself on sys.path, so Hydra's scan of the hydra_plugins namespace finds our plugins
	# from any folder (setuptools' default editable install hides them from it: facebookresearch/hydra#2359).
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]' --config-settings editable_mode=compat
	touch $@

setup: $(STAMP)

sweep: $(STAMP)
	$(BIN)/python train.py -m $(SWEEP) $(ARGS)
	$(BIN)/python analyze.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# -n 0: one process, as the cluster tests share the one cluster and server their module fixture starts and stops.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest --cluster -n 0 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	for name in $(BENCHMARKS); do $(BIN)/python benchmarks/$$name.py $(BENCH_ARGS) || exit 1; done

ui: $(STAMP)
	$(BIN)/mlflow ui

clean:
	rm -rf outputs checkpoints data/cache
