# make run   – set up .venv and run the whole DVC pipeline on the embedded cohort
# make test  – set up .venv and run the tests
# make ui    – serve the MLflow UI on http://127.0.0.1:5000
# make bench – run the benchmarks (training engine, ingestion, tuning with/without pruning)
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: setup run test ui bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(BIN)/dvc repro
	@echo
	@echo "Results:"
	@echo "  metrics:       metrics/*.json   (dvc metrics show)"
	@echo "  samples:       models/train/samples.png, reports/evaluate/samples_per_class.png"
	@echo "  model:         models/train/model.pt (also registered in MLflow as 'brainsynth')"
	@echo "  export:        .venv/bin/brainsynth-generate --n-per-class 100 --out synthetic/"
	@echo "  MLflow runs:   make ui  (then open http://127.0.0.1:5000)"
	@$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000

bench: setup
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_ingest.py
	@test -f data/prepared/dataset.npz || $(BIN)/dvc repro prepare
	$(BIN)/python benchmarks/bench_tune.py

clean:
	rm -rf data models reports checkpoints logs metrics
