# make run   – set up .venv and run the whole DVC pipeline on the embedded cohort (~28 min on 2 CPU cores)
# make run-quick – the whole pipeline on a tiny cohort as a temporary DVC experiment (a minute or two)
# make cluster-demo – the multi-machine set-up (PostgreSQL, mlflow server, 2 tuning workers, torchrun) on this machine
# make test  – set up .venv and run the tests (make test-fast: without the end-to-end, server and multi-process ones)
# make ui    – serve the MLflow UI on http://127.0.0.1:5000
# make bench – run the benchmarks (training engine, ingestion, tuning with/without pruning)
# make docs  – regenerate docs/params.md and docs/metrics.md from the schema and the metric catalogue
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
SHELL := /bin/bash

.PHONY: setup run run-quick cluster-demo test test-fast ui bench docs clean

# run-quick: the tiny preset (presets/tiny.yaml), logged to its own MLflow experiment; the workspace's
# results are untouched (dvc exp run --temp), the experiment shows in `dvc exp show`. The preset's
# flags are read when a recipe runs (after setup), so they come from the venv's Python.
TINY = $(or $(shell $(BIN)/python -m brainsynth.overrides presets/tiny.yaml),$(error presets/tiny.yaml could not be read: the line above says why))
QUICK = -S mlflow.experiment=brainsynth-quick -S mlflow.registered_model=brainsynth-quick $(TINY)

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# DVC ends every repro with "Use `dvc push` to send your updates to remote storage." even when no
# remote is configured (none is by default): without a remote that line is dropped from stdout.
# Stages draw their progress bars on stderr, which stays on the terminal.
run: setup
	@set -o pipefail; if [ -n "$$($(BIN)/dvc remote list)" ]; then $(BIN)/dvc repro; \
	else PYTHONUNBUFFERED=1 $(BIN)/dvc repro | sed -u '/^Use `dvc push` to send your updates/d'; fi
	@echo
	@$(BIN)/python -m brainsynth.evaluation.headline
	@echo
	@echo "More: dvc metrics show | dvc exp show --only-changed | reports/evaluate/*.png | make ui (MLflow)"
	@echo "Export: .venv/bin/brainsynth-generate --n-per-class 100 --out synthetic/"

run-quick: setup
	$(BIN)/dvc exp run --temp $(QUICK)
	@echo
	@echo "The quick run is a DVC experiment (dvc exp show) and the MLflow experiment 'brainsynth-quick' (make ui)."

# cluster-demo: PostgreSQL + mlflow server + Optuna on PostgreSQL (2 workers) + torchrun (2 processes),
# all on this machine, the tiny pipeline as a temporary DVC experiment (brainsynth.cluster).
# ONCE=1 stops the servers when the pipeline is done; PORT=5001 picks the UI port.
CLUSTER = -S mlflow.registered_model=brainsynth-cluster $(TINY) -S tune.n_trials=4
cluster-demo: setup
	$(BIN)/python -m brainsynth.cluster $(if $(ONCE),--once) $(if $(PORT),--port $(PORT)) -- $(CLUSTER)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

docs: setup
	$(BIN)/python -m brainsynth.reference

ui: setup
	@$(BIN)/python -m brainsynth.tracking
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000

bench: setup
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_ingest.py
	@test -f data/prepared/dataset.npz || $(BIN)/dvc repro prepare
	$(BIN)/python benchmarks/bench_tune.py

clean:
	rm -rf data models reports checkpoints logs metrics
