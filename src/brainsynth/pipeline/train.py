"""train: final training with the tuned parameters laid over params.yaml → models/train/.

Resumable: after every epoch a full checkpoint (model, EMA, optimisers, RNG, epoch, MLflow run id)
is written atomically to ``checkpoints/train/last.pt`` — outside DVC's outputs, which DVC deletes
before re-running a stage. Re-running the stage after a kill continues from there, in the same
MLflow run, provided the config and data are unchanged (a fingerprint decides); on success the
resume checkpoint is removed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np

from brainsynth.checkpoint import CheckpointError, load_safe
from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.engine import Trainer
from brainsynth.inference import save_model
from brainsynth.pipeline.common import atomic_dir, read_json, stage_run, upstream_tags, write_json_atomic, write_metrics
from brainsynth.pipeline.tune import BEST_FILE
from brainsynth.pipeline.tune import OUT_DIR as TUNE_DIR
from brainsynth.validation import validation_metrics
from brainsynth.serving import log_generator
from brainsynth.viz import labelled_grid, training_curves

OUT_DIR = Path("models/train")
RESUME_PATH = Path("checkpoints/train/last.pt")
BEST_PATH = Path("checkpoints/train/best.pt")
MODEL_FILE = "model.pt"
BEST_MODEL_FILE = "best.pt"
_NOT_FINGERPRINTED = ("train.epochs", "train.log_every", "train.sample_every", "mlflow.", "evaluate.", "tune.")


def fingerprint(cfg: Config, data: prepared.PreparedData) -> str:
    """What must match for a checkpoint to be resumed: every training-relevant param + the data."""
    relevant = {k: v for k, v in cfg.flat().items() if not k.startswith(_NOT_FINGERPRINTED)}
    blob = json.dumps({"cfg": relevant, "data": data.meta.get("mlflow_run_id"), "counts": data.meta.get("counts")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


HISTORY_FILE = "history.csv"  # per-epoch training losses (dvc plots)
VAL_HISTORY_FILE = "val_history.csv"  # validation scores at the epochs they were computed (dvc plots)


def write_history(history: list[dict[str, float]], val_history: list[dict], folder: Path) -> None:
    """Training curves as CSV files DVC renders with ``dvc plots show/diff``."""
    for name, rows in ((HISTORY_FILE, [{"epoch": i + 1, **row} for i, row in enumerate(history)]), (VAL_HISTORY_FILE, val_history)):
        with open(folder / name, "w", newline="") as handle:
            if rows:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


def fixed_sample_labels(n: int, n_classes: int) -> np.ndarray:
    return np.arange(n) % max(n_classes, 1)


def sample_grid(trainer: Trainer, class_names: list[str], per_class: int, seed: int, path: Path, title: str) -> Path:
    """Fixed-noise samples, one row per class."""
    n_classes = max(len(class_names), 1)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = trainer.sample(labels, seed)
    rows = [images[k * per_class : (k + 1) * per_class] for k in range(n_classes)]
    return labelled_grid(rows, class_names, path, title=title)


def run(cfg: Config, log: logging.Logger) -> None:
    tuned = read_json(TUNE_DIR / BEST_FILE, "tune")
    if tuned.get("params"):
        log.info("laying tuned parameters over params.yaml: %s", tuned["params"])
        cfg = cfg.with_overrides(tuned["params"])
    data = prepared.load("data/prepared")
    train_images, train_labels = data.split("train")
    val_images, val_labels = data.split("val")
    trainer = Trainer(cfg, train_images, train_labels, len(data.class_names))
    log.info("training on %s: %d images, %d steps/epoch, batch %d", trainer.device, len(train_images), trainer.steps_per_epoch, trainer.batch_size)

    print_fp = fingerprint(cfg, data)
    resume_run_id = None
    best_value = float("inf")
    val_history: list[dict] = []
    if RESUME_PATH.is_file():
        try:
            state = load_safe(RESUME_PATH)
        except CheckpointError as err:
            log.warning("ignoring unusable resume checkpoint: %s", err)
            state = None
        if state is not None and state.get("fingerprint") == print_fp and int(state["epoch"]) < cfg.train.epochs:
            trainer.restore(RESUME_PATH)
            resume_run_id = state.get("mlflow_run_id") or None
            best_value = float(state.get("best_value", float("inf")))
            val_history = list(state.get("val_history", []))
            log.info("resuming from %s at epoch %d (mlflow run %s)", RESUME_PATH, trainer.epoch, resume_run_id)
        elif state is not None:
            log.info("resume checkpoint %s belongs to another config or data: starting fresh", RESUME_PATH)

    if resume_run_id is None:
        BEST_PATH.unlink(missing_ok=True)  # a best model of an earlier, different run
    upstream = upstream_tags("tune", tuned)
    tuned_params = {f"tuned.{k}": v for k, v in tuned.get("params", {}).items()}
    with stage_run("train", cfg, upstream, resume_run_id=resume_run_id, extra_params=tuned_params) as run_info:
        run_id = run_info.info.run_id
        started = time.perf_counter()
        staging_figures = Path("logs/train_samples")
        scores: dict[str, float] = {}
        for epoch in range(trainer.epoch, cfg.train.epochs):
            stats = trainer.train_epoch(on_log=lambda step, s: mlflow.log_metrics({f"step_{k}": v for k, v in s.items()}, step=step))
            epoch_metrics = {**{f"train_{k}": v for k, v in stats.losses.items()}, "images_per_second": stats.images_per_second, "epoch_seconds": stats.seconds}
            last = stats.epoch == cfg.train.epochs
            if len(val_images) and (stats.epoch % cfg.train.sample_every == 0 or last):
                scores = validation_metrics(trainer, val_images, val_labels, cfg.tune.eval_images, cfg.seed, cfg.tune.recon_weight, cfg.tune.objective)
                epoch_metrics.update(scores)
                val_history.append({"epoch": stats.epoch, **scores})
                path = sample_grid(trainer, data.class_names, 8, cfg.seed, staging_figures / f"epoch_{stats.epoch:04d}.png", f"fixed-noise samples, epoch {stats.epoch}")
                mlflow.log_artifact(str(path), artifact_path="samples")
                if scores["val_objective"] < best_value:
                    best_value = scores["val_objective"]
                    save_model(BEST_PATH, cfg, trainer.model.ema_encoder, trainer.model.ema_decoder, trainer.image_size,
                               trainer.model.n_classes, data.class_names, run_id)
                    log.info("new best val_objective %.3f at epoch %d", best_value, stats.epoch)
            mlflow.log_metrics(epoch_metrics, step=stats.epoch)
            log.info("epoch %d/%d %.1fs (%.0f img/s): %s", stats.epoch, cfg.train.epochs, stats.seconds, stats.images_per_second,
                     ", ".join(f"{k}={v:.4f}" for k, v in stats.losses.items()))
            trainer.save(RESUME_PATH, {"fingerprint": print_fp, "mlflow_run_id": run_id, "best_value": best_value,
                                        "val_history": val_history})

        with atomic_dir(OUT_DIR) as staging:
            save_model(staging / MODEL_FILE, cfg, trainer.model.ema_encoder, trainer.model.ema_decoder, trainer.image_size,
                       trainer.model.n_classes, data.class_names, run_id)
            sample_grid(trainer, data.class_names, 10, cfg.seed, staging / "samples.png", f"final samples (EMA decoder), {cfg.train.epochs} epochs")
            if BEST_PATH.is_file():
                shutil.copy2(BEST_PATH, staging / BEST_MODEL_FILE)
            write_history(trainer.history, val_history, staging)
            training_curves(trainer.history, val_history, staging / "training_curves.png")
            write_json_atomic(staging / "meta.json", {"mlflow_run_id": run_id, "epochs": cfg.train.epochs, "device": str(trainer.device),
                                                     "tuned_params": tuned.get("params", {}), "fingerprint": print_fp})
        history = trainer.history[-1] if trainer.history else {}
        metrics = {**{f"final_{k}": v for k, v in history.items()}, **scores, "epochs": trainer.epoch,
                   "best_val_objective": best_value if best_value != float("inf") else None,
                   "train_seconds_this_run": round(time.perf_counter() - started, 2)}
        write_metrics("train", metrics)
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None and not k.startswith(("final_", "val_"))})
        mlflow.log_artifact(str(OUT_DIR / "samples.png"), artifact_path="figures")
        mlflow.log_artifact(str(OUT_DIR / "training_curves.png"), artifact_path="figures")
        mlflow.log_artifact(str(OUT_DIR / MODEL_FILE), artifact_path="model")
        if (OUT_DIR / BEST_MODEL_FILE).is_file():
            mlflow.log_artifact(str(OUT_DIR / BEST_MODEL_FILE), artifact_path="model")
        if cfg.mlflow.registered_model:
            uri = log_generator(OUT_DIR / MODEL_FILE, cfg.mlflow.registered_model)
            log.info("registered %s as MLflow model %r (pyfunc: predict({'n': 8, 'class': 0, 'seed': 0}))", uri, cfg.mlflow.registered_model)
        RESUME_PATH.unlink(missing_ok=True)
        BEST_PATH.unlink(missing_ok=True)
        log.info("model written to %s", OUT_DIR / MODEL_FILE)
