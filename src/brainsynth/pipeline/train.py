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
import json
import logging
import time
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

from brainsynth import distributed, provenance, tracking
from brainsynth.checkpoint import CheckpointError, load_model_file, load_safe, save_atomic, save_model_file, save_training_state
from brainsynth.config import Config, ConfigError, load_overrides, with_overrides
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.files import atomic_dir, digest, write_json_atomic
from brainsynth.paths import BEST_CHECKPOINT, BEST_PARAMS, MODEL_FILE, PREPARED_DIR, RESUME_CHECKPOINT, TRAIN_DIR, TUNED_FOR
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics
from brainsynth.serving import log_generator
from brainsynth.training.engine import Trainer
from brainsynth.training.loop import EpochResult, RunState, fit
from brainsynth.training.losses import curve_panels
from brainsynth.training.objective import validation_metrics
from brainsynth.viz import class_grid, training_curves

HISTORY_FILE = "history.csv"  # per-epoch training losses (dvc plots)
VAL_HISTORY_FILE = "val_history.csv"  # validation scores at the epochs they were computed (dvc plots)
STEP_HISTORY_FILE = "step_history.csv"  # loss means over windows of train.log_every steps (step and fractional epoch)


def fingerprint(cfg: Config) -> str:
    """What must match for a checkpoint to be resumed: every training input param + the data."""
    return provenance.fingerprint(16, cfg=provenance.training_inputs(cfg), data=digest(PREPARED_DIR))


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
    current = json.loads(json.dumps(provenance.tuning_inputs(cfg), default=str))  # as JSON stores it (tuples → lists)
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
    cfg, tuned = with_tuned_values(cfg, log)
    data = prepared.load(PREPARED_DIR)
    (train_images, train_labels), (val_images, val_labels) = data.split("train"), data.split("val")
    world = distributed.world_from_env()
    device = resolve_device(cfg.train.device)
    rank_device = distributed.init(world, cuda=device.type == "cuda") or device  # a rank's own GPU, or the one device
    trainer = Trainer(cfg, train_images, train_labels, len(data.class_names), rank_device, world)
    log.info("training on %s: %d images, %d steps/epoch, batch %d%s", trainer.device, len(train_images), trainer.steps_per_epoch,
             trainer.batch_size, f" ({world.size} processes × {trainer.local_batch})" if world.distributed else "")
    run_fingerprint = fingerprint(cfg)
    resume_run_id, state = resume(trainer, cfg, run_fingerprint, world.is_main, log)
    if not world.is_main:  # rank 0 alone validates, logs and writes
        fit(trainer, cfg.train.epochs, state=state,
            on_epoch=lambda result, _: log.info("epoch %d/%d %.1fs", result.stats.epoch, cfg.train.epochs, result.stats.seconds))
        distributed.shutdown(world)
        return

    if resume_run_id is None:
        BEST_CHECKPOINT.unlink(missing_ok=True)  # a best model of an earlier, different run
    with mlflow_run("train", cfg, upstream_tags("tune", BEST_PARAMS), resume_run_id=resume_run_id,
                    extra_params={f"tuned.{k}": v for k, v in tuned.items()}, system_metrics=True) as run_info:
        run_id = run_info.info.run_id
        if resume_run_id is None:
            tracking.log_dataset(train_images, train_labels, PREPARED_DIR, "training")
        started = time.perf_counter()
        validate = (lambda t: validation_metrics(t, val_images, val_labels, cfg)) if len(val_images) else None
        state = fit(trainer, cfg.train.epochs, validate, cfg.train.sample_every, state=state, record_steps=True, progress=True,
                    on_epoch=EpochEnd(trainer, cfg, data, {"fingerprint": run_fingerprint, "mlflow_run_id": run_id}, log))
        kept_epoch = keep_model(trainer, cfg, state, log)
        write_outputs(trainer, cfg, data, state, kept_epoch, {"tuned_params": tuned, "fingerprint": run_fingerprint})
        kept_scores = next((row for row in state.val_history if row["epoch"] == kept_epoch), {})
        # metrics/train.json: the kept model's validation scores (what DVC compares); losses, epochs
        # and timings are in MLflow and models/train/history.csv.
        write_metrics("train", {"validation": {k: v for k, v in kept_scores.items() if k != "epoch"}, "model": {"kept_epoch": kept_epoch}})
        mlflow.log_metrics({"epochs": trainer.epoch, "kept_epoch": kept_epoch, "train_seconds_this_run": round(time.perf_counter() - started, 2),
                            **({"best_val_objective": state.best_value} if state.best_epoch else {})})
        for artifact_path, names in (("figures", ("samples.png", "training_curves.png")), ("curves", (HISTORY_FILE, VAL_HISTORY_FILE, STEP_HISTORY_FILE))):
            for name in names:
                mlflow.log_artifact(str(TRAIN_DIR / name), artifact_path=artifact_path)
        register(cfg, run_id, kept_epoch, len(train_images), data, trainer.image_size, log)
        RESUME_CHECKPOINT.unlink(missing_ok=True)
        BEST_CHECKPOINT.unlink(missing_ok=True)
        log.info("model (epoch %d, train.keep = %s) written to %s", kept_epoch, cfg.train.keep, MODEL_FILE)
    distributed.shutdown(world)


def with_tuned_values(cfg: Config, log: logging.Logger) -> tuple[Config, dict]:
    """params.yaml with tune's chosen values (models/tune/best_params.yaml) laid over it, and those values."""
    tuned = load_overrides(BEST_PARAMS)
    if tuned:
        check_tuned_for(cfg)
        log.info("laying tuned parameters over params.yaml: %s", tuned)
        cfg = with_overrides(cfg, tuned, source=str(BEST_PARAMS))
    return cfg, tuned


def resume(trainer: Trainer, cfg: Config, run_fingerprint: str, is_main: bool, log: logging.Logger) -> tuple[str | None, RunState]:
    """Restore ``trainer`` from the resume checkpoint when it belongs to this config and data and is
    unfinished; returns its MLflow run id (None: a fresh run) and the run state saved with it."""
    if not RESUME_CHECKPOINT.is_file():
        return None, RunState()
    try:
        stored = load_safe(RESUME_CHECKPOINT)
    except CheckpointError as err:
        log.warning("ignoring unusable resume checkpoint: %s", err)
        return None, RunState()
    if stored.get("fingerprint") == run_fingerprint and int(stored["epoch"]) <= cfg.train.epochs:
        # At the last epoch too: a run stopped after its final checkpoint (while writing or
        # registering the model) goes straight to that, instead of training again from scratch.
        trainer.load_state_dict(stored)
        run_id = stored.get("mlflow_run_id") or None
        done = " (training was complete: saving and registering only)" if trainer.epoch == cfg.train.epochs else ""
        log.info("resuming from %s at epoch %d (mlflow run %s)%s", RESUME_CHECKPOINT, trainer.epoch, run_id, done)
        return run_id, RunState.from_dict(stored)
    log.info("resume checkpoint %s belongs to another config or data: starting fresh", RESUME_CHECKPOINT)
    if is_main:
        close_abandoned_run(stored.get("mlflow_run_id"), log)
    return None, RunState()


class EpochEnd:
    """``fit``'s per-epoch callback in the train stage: the sample grid on MLflow's image slider at
    validated epochs, the best model so far, the epoch's metrics, a log line with the time left,
    and the resume checkpoint (with ``extra``: fingerprint and MLflow run id)."""

    def __init__(self, trainer: Trainer, cfg: Config, data: prepared.PreparedData, extra: dict, log: logging.Logger):
        self.trainer, self.cfg, self.data, self.extra, self.log = trainer, cfg, data, extra, log
        self.epoch_ends = [time.perf_counter()]  # wall clock at each epoch's end, validation included

    def __call__(self, result: EpochResult, state: RunState) -> None:
        trainer, cfg, stats = self.trainer, self.cfg, result.stats
        if result.scores:
            path = class_grid(trainer.sample, self.data.class_names, 8, cfg.seed, Path("logs/train_samples") / f"epoch_{stats.epoch:04d}.png",
                              f"fixed-noise samples, epoch {stats.epoch}")
            with Image.open(path) as grid:  # the UI's image slider steps through training
                mlflow.log_image(np.asarray(grid.convert("RGB")), key="samples", step=stats.epoch)
        if result.improved:
            save_ema_model(BEST_CHECKPOINT, trainer, cfg, self.data)
            self.log.info("new best val_objective %.3f at epoch %d", state.best_value, stats.epoch)
        mlflow.log_metrics({**result.metrics(), "images_per_second": stats.images_per_second, "epoch_seconds": stats.seconds}, step=stats.epoch)
        self.epoch_ends.append(time.perf_counter())
        remaining = estimate_remaining(self.epoch_ends, cfg.train.epochs - stats.epoch)
        self.log.info("epoch %d/%d %.1fs (%.0f img/s, about %.0f min left): %s", stats.epoch, cfg.train.epochs, stats.seconds,
                      stats.images_per_second, remaining / 60, ", ".join(f"{k}={v:.4f}" for k, v in stats.computed_losses().items()))
        save_training_state(trainer, RESUME_CHECKPOINT, {**self.extra, **state.as_dict()})


def write_outputs(trainer: Trainer, cfg: Config, data: prepared.PreparedData, state: RunState, kept_epoch: int, meta: dict) -> None:
    """models/train/: the model file, the last critic, the sample grid, the curves (CSV and figure) and meta.json, all or nothing."""
    with atomic_dir(TRAIN_DIR) as staging:
        save_ema_model(staging / MODEL_FILE.name, trainer, cfg, data)
        # The critic of the last epoch, for diagnostics only (what it scores, its class margin).
        save_atomic({"critic": trainer.model.critic.state_dict(), "n_classes": trainer.model.n_classes}, staging / "critic.pt")
        class_grid(trainer.sample, data.class_names, 10, cfg.seed, staging / "samples.png",
                   f"samples of the kept model (EMA decoder, epoch {kept_epoch} of {cfg.train.epochs})")
        write_history(trainer.history, state.val_history, state.step_history, staging)
        training_curves(trainer.history, state.val_history, staging / "training_curves.png", curve_panels(tuple(trainer.history[-1]) if trainer.history else ()))
        write_json_atomic(staging / "meta.json", {"epochs": cfg.train.epochs, "kept_epoch": kept_epoch, "keep": cfg.train.keep,
                                                 "device": str(trainer.device), **meta})
    tracking.tag_outputs(MODEL_FILE)


def register(cfg: Config, run_id: str, kept_epoch: int, n_train: int, data: prepared.PreparedData, image_size: int,
             log: logging.Logger) -> None:
    """The model file as an MLflow pyfunc (runs:/<run id>/generator: the weights go to MLflow once,
    there), registered under ``mlflow.registered_model`` with a description and lineage tags."""
    description = (f"Trained by MLflow run {run_id} (train stage): epoch {kept_epoch} of {cfg.train.epochs} kept "
                   f"(train.keep = {cfg.train.keep}), {n_train} training slices, "
                   f"{len(data.class_names)} classes ({', '.join(data.class_names)}), {image_size}² px. "
                   f"evaluate adds its metrics as eval.* tags.")
    version_tags = {"data_hash": tracking.prepared_data_hash(PREPARED_DIR), "train_run_id": run_id,
                    "pipeline_run": mlflow.get_run(run_id).data.tags.get(tracking.PIPELINE_RUN_TAG, "")}
    uri = log_generator(MODEL_FILE, cfg.mlflow.registered_model, description, version_tags)
    mlflow.set_tag("model_uri", uri)
    if cfg.mlflow.registered_model:
        log.info("registered %s as MLflow model %r (pyfunc: predict({'n': 8, 'class': 0, 'seed': 0}))", uri, cfg.mlflow.registered_model)
    else:
        log.info("logged the model as %s (runs:/%s/generator; mlflow.registered_model is empty: not registered)", uri, run_id)


def estimate_remaining(epoch_ends: list[float], epochs_left: int, window: int = 3) -> float:
    """Seconds left: the mean wall time of the last ``window`` epochs × the epochs left. Not the
    mean since the start, because the first epochs run without the critic (loss.adv_start_epoch)
    and are cheaper: that mean promised 8 minutes where 10 were left."""
    recent = epoch_ends[-(window + 1):]
    return (recent[-1] - recent[0]) / max(1, len(recent) - 1) * epochs_left


def keep_model(trainer: Trainer, cfg: Config, state: RunState, log: logging.Logger) -> int:
    """Put the model ``train.keep`` asks for into the trainer's EMA encoder/decoder; returns its epoch."""
    if cfg.train.keep == "last" or state.best_epoch in (0, trainer.epoch):
        if cfg.train.keep == "best" and state.best_epoch == 0:
            log.warning("train.keep = best but no epoch was validated (no validation split): keeping the last epoch")
        return trainer.epoch
    stored = load_model_file(BEST_CHECKPOINT)
    trainer.model.ema_encoder.load_state_dict(stored.encoder)
    trainer.model.ema_decoder.load_state_dict(stored.decoder)
    log.info("train.keep = best: the model of epoch %d (val_objective %.3f) replaces the last epoch's", state.best_epoch, state.best_value)
    return state.best_epoch
