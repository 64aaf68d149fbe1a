# make run   – set up .venv and run the whole DVC pipeline on the embedded cohort (~28 min on 2 CPU cores)
# make run-quick – the whole pipeline on a tiny cohort as a temporary DVC experiment (a minute or two)
# make cluster-demo – the multi-machine set-up (PostgreSQL, mlflow server, 2 tuning workers, torchrun) on this machine
# make test  – set up .venv and run the tests
# make ui    – serve the MLflow UI on http://127.0.0.1:5000
# make bench – run the benchmarks (training engine, ingestion, tuning with/without pruning)
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
SHELL := /bin/bash

.PHONY: setup run run-quick cluster-demo test ui bench clean

# run-quick: tiny images, networks and budgets, logged to its own MLflow experiment; the workspace's
# results are untouched (dvc exp run --temp), the experiment shows in `dvc exp show`.
QUICK := -S mlflow.experiment=brainsynth-quick -S mlflow.registered_model=brainsynth-quick $(TINY)
TINY := -S data.image_size=32 \
	-S data.embedded.n_subjects=12 -S data.embedded.slices_per_subject=4 -S model.latent_dim=8 -S model.base_channels=8 \
	-S model.max_channels=16 -S model.cbam_res=[8] -S model.self_attention_res=[8] -S train.epochs=2 -S train.batch_size=4 \
	-S train.sample_every=1 -S tune.n_trials=2 -S tune.epochs=1 -S tune.eval_images=8 -S tune.max_train_images=0 \
	-S swd.patches_per_image=16 -S swd.directions=32 -S evaluate.n_images=12 -S evaluate.n_pairs=8 \
	-S evaluate.n_recon_examples=4 -S evaluate.utility_epochs=2 -S evaluate.utility_seeds=2 \
	-S evaluate.classifier.min_steps=40 -S evaluate.judge.max_iter=50

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
	@$(BIN)/python -m brainsynth.headline
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
CLUSTER := -S mlflow.registered_model=brainsynth-cluster $(TINY) -S tune.n_trials=4
cluster-demo: setup
	$(BIN)/python -m brainsynth.cluster $(if $(ONCE),--once) $(if $(PORT),--port $(PORT)) -- $(CLUSTER)

test: setup
	$(BIN)/python -m pytest -q

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
