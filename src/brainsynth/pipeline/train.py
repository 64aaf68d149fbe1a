"""train: final training with the tuned values (models/tune/best_params.yaml) laid over params.yaml
→ models/train/.

``train.keep`` decides the one model that leaves this stage — ``best`` (lowest validation objective
among the validated epochs) or ``last`` — and that model is ``model.pt``, the sample grid, the
MLflow artifact and the registered model alike; evaluate and generate read nothing else.

Resumable: after every epoch a full checkpoint (model, EMA, optimisers, RNG, counters, MLflow run
id) is written atomically to ``checkpoints/train/last.pt`` — outside DVC's outputs, which DVC
deletes before re-running a stage. Re-running the stage after a kill continues from there, in the
same MLflow run, provided the config and data are unchanged (a fingerprint decides); on success the
resume checkpoint is removed.

Data-parallel (``train.nproc_per_node`` > 1, or the stage started by ``torchrun`` on several
nodes): every rank builds the same trainer, resumes from the same checkpoint and trains its shard
of each batch; rank 0 alone validates, logs to MLflow, writes checkpoints and the model, and
registers it. The ranks meet at a barrier before they leave.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

from brainsynth import distributed, tracking
from brainsynth.checkpoint import CheckpointError, load_model_file, load_safe, restore_training_state, save_model_file, save_training_state
from brainsynth.config import Config, ConfigError, load_overrides, tuning_inputs
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.engine import Trainer
from brainsynth.files import atomic_dir, write_json_atomic
from brainsynth.objective import class_judge, validation_metrics
from brainsynth.paths import BEST_CHECKPOINT, BEST_PARAMS, MODEL_FILE, PREPARED_DIR, RESUME_CHECKPOINT, TRAIN_DIR, TUNED_FOR
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics
from brainsynth.serving import log_generator
from brainsynth.viz import class_grid, training_curves

HISTORY_FILE = "history.csv"  # per-epoch training losses (dvc plots)
VAL_HISTORY_FILE = "val_history.csv"  # validation scores at the epochs they were computed (dvc plots)
STEP_HISTORY_FILE = "step_history.csv"  # loss means over windows of train.log_every steps (step and fractional epoch)
_NOT_FINGERPRINTED = ("train.epochs", "train.log_every", "train.sample_every", "train.keep", "mlflow.", "evaluate.", "tune.", "generate.")


def fingerprint(cfg: Config) -> str:
    """What must match for a checkpoint to be resumed: every training-relevant param + the data."""
    relevant = {k: v for k, v in cfg.flat().items() if not k.startswith(_NOT_FINGERPRINTED)}
    blob = json.dumps({"cfg": relevant, "data": tracking.digest(PREPARED_DIR)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_history(history: list[dict[str, float]], val_history: list[dict], step_history: list[dict], folder: Path) -> None:
    """Training curves as CSV files DVC renders with ``dvc plots show/diff``."""
    for name, rows in ((HISTORY_FILE, [{"epoch": i + 1, **row} for i, row in enumerate(history)]), (VAL_HISTORY_FILE, val_history),
                       (STEP_HISTORY_FILE, step_history)):
        with open(folder / name, "w", newline="") as handle:
            if rows:
                columns = list(dict.fromkeys(key for row in rows for key in row))  # a term may start later (warm-up)
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)


def save_ema_model(path: Path, trainer: Trainer, cfg: Config, data: prepared.PreparedData) -> None:
    model = trainer.model
    save_model_file(path, cfg.model, trainer.image_size, model.n_classes, data.class_names, model.ema_encoder, model.ema_decoder,
                    pixel_mm=data.pixel_mm)


def check_tuned_for(cfg: Config) -> None:
    """Refuse tuned values found for other params: a direct ``python stages/train.py`` after
    params.yaml changed would otherwise lay stale values over it (``dvc repro`` reruns tune first)."""
    if not TUNED_FOR.is_file():
        raise ConfigError(f"{BEST_PARAMS}: no record of the params it was tuned for ({TUNED_FOR}); rerun tuning: dvc repro tune")
    try:
        recorded = json.loads(TUNED_FOR.read_text())
    except ValueError:
        raise ConfigError(f"{TUNED_FOR}: not valid JSON; rerun tuning: dvc repro tune") from None
    current = json.loads(json.dumps(tuning_inputs(cfg), default=str))  # as JSON stores it (tuples → lists)
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if changed:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} → {current.get(k)!r}" for k in changed[:3]) + (" …" if len(changed) > 3 else "")
        raise ConfigError(f"{BEST_PARAMS} was tuned for other params ({shown}); rerun tuning first: dvc repro tune (or dvc repro)")


def close_abandoned_run(run_id: str | None, log: logging.Logger) -> None:
    """The MLflow run of a killed training whose checkpoint is now discarded will never resume:
    mark it KILLED (as tune does for stale trials) instead of leaving it RUNNING forever."""
    if not run_id:
        return
    try:
        if tracking.mark_killed(run_id, "abandoned: its checkpoint belonged to another config or data", only_if_running=True):
            log.info("marked the abandoned training run %s KILLED", run_id)
    except Exception:  # the run may live in another tracking store
        pass


def run(cfg: Config, log: logging.Logger) -> None:
    tuned = load_overrides(BEST_PARAMS)
    if tuned:
        check_tuned_for(cfg)
        log.info("laying tuned parameters over params.yaml: %s", tuned)
        cfg = cfg.with_overrides(tuned, source=str(BEST_PARAMS))
    data = prepared.load(PREPARED_DIR)
    train_images, train_labels = data.split("train")
    val_images, val_labels = data.split("val")
    world = distributed.world_from_env()
    rank_device = distributed.init(world, cuda=resolve_device(cfg.train.device).type == "cuda")
    trainer = Trainer(cfg, train_images, train_labels, len(data.class_names), rank_device, world)
    log.info("training on %s: %d images, %d steps/epoch, batch %d%s", trainer.device, len(train_images), trainer.steps_per_epoch,
             trainer.batch_size, f" ({world.size} processes × {trainer.local_batch})" if world.distributed else "")

    print_fp = fingerprint(cfg)
    resume_run_id = None
    best = {"value": float("inf"), "epoch": 0}
    val_history: list[dict] = []
    step_history: list[dict] = []  # windows of train.log_every steps: models/train/step_history.csv, not MLflow metrics (one axis there: epoch)
    if RESUME_CHECKPOINT.is_file():
        try:
            state = load_safe(RESUME_CHECKPOINT)
        except CheckpointError as err:
            log.warning("ignoring unusable resume checkpoint: %s", err)
            state = None
        if state is not None and state.get("fingerprint") == print_fp and int(state["epoch"]) < cfg.train.epochs:
            restore_training_state(trainer, RESUME_CHECKPOINT)
            resume_run_id = state.get("mlflow_run_id") or None
            best = {"value": float(state.get("best_value", float("inf"))), "epoch": int(state.get("best_epoch", 0))}
            val_history = list(state.get("val_history", []))
            step_history = list(state.get("step_history", []))
            log.info("resuming from %s at epoch %d (mlflow run %s)", RESUME_CHECKPOINT, trainer.epoch, resume_run_id)
        elif state is not None:
            log.info("resume checkpoint %s belongs to another config or data: starting fresh", RESUME_CHECKPOINT)
            if world.is_main:
                close_abandoned_run(state.get("mlflow_run_id"), log)

    if not world.is_main:
        for _ in range(trainer.epoch, cfg.train.epochs):
            stats = trainer.train_epoch()
            log.info("epoch %d/%d %.1fs", stats.epoch, cfg.train.epochs, stats.seconds)
        distributed.shutdown(world)
        return

    judge = class_judge(cfg, train_images, train_labels, len(data.class_names), trainer.device)
    if resume_run_id is None:
        BEST_CHECKPOINT.unlink(missing_ok=True)  # a best model of an earlier, different run
    tuned_params = {f"tuned.{k}": v for k, v in tuned.items()}
    with mlflow_run("train", cfg, upstream_tags("tune", BEST_PARAMS), resume_run_id=resume_run_id, extra_params=tuned_params,
                    system_metrics=True) as run_info:
        run_id = run_info.info.run_id
        if resume_run_id is None:
            tracking.log_dataset(train_images, train_labels, PREPARED_DIR, "training")
        started = time.perf_counter()
        epoch_ends = [started]  # wall clock at each epoch's end, validation included
        staging_figures = Path("logs/train_samples")
        for _ in range(trainer.epoch, cfg.train.epochs):
            stats = trainer.train_epoch(on_log=lambda step, means: step_history.append(
                                            {"step": step, "epoch": round(step / trainer.steps_per_epoch, 3), **means}),
                                        progress=f"epoch {trainer.epoch + 1}/{cfg.train.epochs}")
            epoch_metrics = {**{f"train_{k}": v for k, v in stats.computed_losses().items()}, "images_per_second": stats.images_per_second,
                             "epoch_seconds": stats.seconds}
            if len(val_images) and (stats.epoch % cfg.train.sample_every == 0 or stats.epoch == cfg.train.epochs):
                scores = validation_metrics(trainer, val_images, val_labels, cfg, judge)
                epoch_metrics.update(scores)
                val_history.append({"epoch": stats.epoch, **scores})
                path = class_grid(trainer.sample, data.class_names, 8, cfg.seed, staging_figures / f"epoch_{stats.epoch:04d}.png",
                                  f"fixed-noise samples, epoch {stats.epoch}")
                with Image.open(path) as grid:  # the UI's image slider steps through training
                    mlflow.log_image(np.asarray(grid.convert("RGB")), key="samples", step=stats.epoch)
                if scores["val_objective"] < best["value"]:
                    best = {"value": scores["val_objective"], "epoch": stats.epoch}
                    save_ema_model(BEST_CHECKPOINT, trainer, cfg, data)
                    log.info("new best val_objective %.3f at epoch %d", best["value"], stats.epoch)
            mlflow.log_metrics(epoch_metrics, step=stats.epoch)
            epoch_ends.append(time.perf_counter())
            remaining = estimate_remaining(epoch_ends, cfg.train.epochs - stats.epoch)
            log.info("epoch %d/%d %.1fs (%.0f img/s, about %.0f min left): %s", stats.epoch, cfg.train.epochs, stats.seconds,
                     stats.images_per_second, remaining / 60, ", ".join(f"{k}={v:.4f}" for k, v in stats.computed_losses().items()))
            save_training_state(trainer, RESUME_CHECKPOINT, {"fingerprint": print_fp, "mlflow_run_id": run_id, "best_value": best["value"],
                                              "best_epoch": best["epoch"], "val_history": val_history, "step_history": step_history})

        kept_epoch = keep_model(trainer, cfg, best, log)
        with atomic_dir(TRAIN_DIR) as staging:
            save_ema_model(staging / MODEL_FILE.name, trainer, cfg, data)
            class_grid(trainer.sample, data.class_names, 10, cfg.seed, staging / "samples.png",
                       f"samples of the kept model (EMA decoder, epoch {kept_epoch} of {cfg.train.epochs})")
            write_history(trainer.history, val_history, step_history, staging)
            training_curves(trainer.history, val_history, staging / "training_curves.png")
            write_json_atomic(staging / "meta.json", {"epochs": cfg.train.epochs, "kept_epoch": kept_epoch, "keep": cfg.train.keep,
                                                     "device": str(trainer.device), "tuned_params": tuned, "fingerprint": print_fp})
        tracking.tag_outputs(MODEL_FILE)
        kept_scores = next((row for row in val_history if row["epoch"] == kept_epoch), {})
        # metrics/train.json: the kept model's validation scores (what DVC compares); losses, epochs
        # and timings are in MLflow and models/train/history.csv.
        write_metrics("train", {"validation": {k: v for k, v in kept_scores.items() if k != "epoch"}, "model": {"kept_epoch": kept_epoch}})
        mlflow.log_metrics({"epochs": trainer.epoch, "kept_epoch": kept_epoch, "train_seconds_this_run": round(time.perf_counter() - started, 2),
                            **({"best_val_objective": best["value"]} if best["epoch"] else {})})
        for figure in ("samples.png", "training_curves.png"):
            mlflow.log_artifact(str(TRAIN_DIR / figure), artifact_path="figures")
        for curve in (HISTORY_FILE, VAL_HISTORY_FILE, STEP_HISTORY_FILE):
            mlflow.log_artifact(str(TRAIN_DIR / curve), artifact_path="curves")
        # The model file goes to MLflow once, inside the pyfunc (runs:/<run id>/generator): no second
        # copy of the weights as a plain run artifact.
        description = (f"Trained by MLflow run {run_id} (train stage): epoch {kept_epoch} of {cfg.train.epochs} kept "
                       f"(train.keep = {cfg.train.keep}), {len(train_images)} training slices, "
                       f"{len(data.class_names)} classes ({', '.join(data.class_names)}), {trainer.image_size}² px. "
                       f"evaluate adds its metrics as eval.* tags.")
        version_tags = {"data_hash": tracking.prepared_data_hash(PREPARED_DIR), "train_run_id": run_id,
                        "pipeline_run": mlflow.get_run(run_id).data.tags.get(tracking.PIPELINE_RUN_TAG, "")}
        uri = log_generator(MODEL_FILE, cfg.mlflow.registered_model, description, version_tags)
        mlflow.set_tag("model_uri", uri)
        if cfg.mlflow.registered_model:
            log.info("registered %s as MLflow model %r (pyfunc: predict({'n': 8, 'class': 0, 'seed': 0}))", uri, cfg.mlflow.registered_model)
        else:
            log.info("logged the model as %s (runs:/%s/generator; mlflow.registered_model is empty: not registered)", uri, run_id)
        RESUME_CHECKPOINT.unlink(missing_ok=True)
        BEST_CHECKPOINT.unlink(missing_ok=True)
        log.info("model (epoch %d, train.keep = %s) written to %s", kept_epoch, cfg.train.keep, MODEL_FILE)
    distributed.shutdown(world)


def estimate_remaining(epoch_ends: list[float], epochs_left: int, window: int = 3) -> float:
    """Seconds left: the mean wall time of the last ``window`` epochs × the epochs left. Not the
    mean since the start, because the first epochs run without the critic (loss.adv_start_epoch)
    and are cheaper: that mean promised 8 minutes where 10 were left."""
    recent = epoch_ends[-(window + 1):]
    return (recent[-1] - recent[0]) / max(1, len(recent) - 1) * epochs_left


def keep_model(trainer: Trainer, cfg: Config, best: dict, log: logging.Logger) -> int:
    """Put the model ``train.keep`` asks for into the trainer's EMA encoder/decoder; returns its epoch."""
    if cfg.train.keep == "last" or best["epoch"] in (0, trainer.epoch):
        if cfg.train.keep == "best" and best["epoch"] == 0:
            log.warning("train.keep = best but no epoch was validated (no validation split): keeping the last epoch")
        return trainer.epoch
    stored = load_model_file(BEST_CHECKPOINT)
    trainer.model.ema_encoder.load_state_dict(stored.encoder)
    trainer.model.ema_decoder.load_state_dict(stored.decoder)
    log.info("train.keep = best: the model of epoch %d (val_objective %.3f) replaces the last epoch's", best["epoch"], best["value"])
    return best["epoch"]
