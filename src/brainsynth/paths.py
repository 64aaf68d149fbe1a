"""Where the stages read and write, relative to the repository root: the only thing stages share,
so that no stage imports another. dvc.yaml declares the same paths."""

from __future__ import annotations

from pathlib import Path

LOG_DIR = Path("logs")
METRICS_DIR = Path("metrics")

PREPARED_DIR = Path("data/prepared")  # prepare → everyone
PREPARED_DATASET = PREPARED_DIR / "dataset.npz"
SKIPPED_REPORT = PREPARED_DIR / "skipped.csv"

TUNE_DIR = Path("models/tune")  # tune → train
BEST_PARAMS = TUNE_DIR / "best_params.yaml"  # a params file: dvc.yaml lists it under train's params
STUDY_JOURNAL = TUNE_DIR / "study.journal"
TUNED_FOR = TUNE_DIR / "tuned_for.json"  # the params the tuned values were found for (train refuses a mismatch)

TRAIN_DIR = Path("models/train")  # train → evaluate, generate, the registry
MODEL_FILE = TRAIN_DIR / "model.pt"
RESUME_CHECKPOINT = Path("checkpoints/train/last.pt")  # outside DVC's outputs: DVC deletes those before a rerun
BEST_CHECKPOINT = Path("checkpoints/train/best.pt")

EVALUATE_DIR = Path("reports/evaluate")
UTILITY_CACHE = Path("checkpoints/evaluate")  # utility results per model and data: an evaluate.n_pairs change retrains nothing
SYNTHETIC_DIR = Path("data/synthetic")
