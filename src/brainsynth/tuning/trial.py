"""One tuning trial: train ``tune.epochs`` epochs with ``loop.fit``, reporting the validation objective
to Optuna's pruner after each (the trial's MLflow run is nested in the study's)."""

from __future__ import annotations

import json
import logging
import math

import mlflow
import numpy as np
import optuna

from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.paths import LOG_DIR
from brainsynth.training.engine import DivergenceError, Trainer
from brainsynth.training.loop import EpochResult, RunState, fit
from brainsynth.training.objective import validation_metrics
from brainsynth.tuning.search_space import search_space, suggest, trial_config
from brainsynth.viz import class_grid

log = logging.getLogger("brainsynth.tune")


def trial_data(cfg: Config, data: prepared.PreparedData, quiet: bool = False):
    """(train images, labels, val images, labels) for trials: a fixed training subset of
    ``tune.max_train_images`` and the validation split."""
    train_images, train_labels = data.split("train")
    if cfg.tune.max_train_images and len(train_images) > cfg.tune.max_train_images:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(train_images), cfg.tune.max_train_images, replace=False))
        train_images, train_labels = train_images[pick], train_labels[pick]
    val_images, val_labels = data.split("val")
    if len(val_images) == 0:
        val_images, val_labels = train_images, train_labels
        if not quiet:
            log.warning("no validation split (data.val_fraction = 0): tuning scores on training images")
    return train_images, train_labels, val_images, val_labels


class Objective:
    """Trains one trial for ``tune.epochs`` epochs, reporting the validation objective each epoch."""

    def __init__(self, cfg: Config, data: prepared.PreparedData, parent_run_id: str, device=None, quiet: bool = False,
                 worker: str = "main"):
        self.cfg, self.class_names, self.parent_run_id = cfg, data.class_names, parent_run_id
        self.device = device or resolve_device(cfg.train.device)
        self.worker = worker  # who runs the trials (tagged on each, so a study shared by workers and machines can be read)
        self.space = search_space(cfg, quiet)
        self.arrays = trial_data(cfg, data, quiet)

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.cfg
        train_images, train_labels, val_images, val_labels = self.arrays
        overrides = {name: suggest(trial, name, dim) for name, dim in self.space.items()}
        run = mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True, parent_run_id=self.parent_run_id,
                               tags={"stage": "tune-trial", "optuna_trial": str(trial.number), "optuna_study": trial.study.study_name,
                                     "tune_worker": self.worker})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trial.set_user_attr("worker", self.worker)
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in overrides.items()})
        state, status = "COMPLETE", "FINISHED"
        try:
            trial_cfg = trial_config(cfg, overrides)
            trainer = Trainer(trial_cfg, train_images, train_labels, len(self.class_names), device=self.device)

            def report(result: EpochResult, _: RunState) -> None:
                nonlocal state
                epoch, value = result.stats.epoch, result.scores["val_objective"]
                mlflow.log_metrics(result.metrics(), step=epoch)
                log.info("trial %d epoch %d: objective %.3f (swd %.2f, mae %.2f)", trial.number, epoch, value, result.scores["val_swd"],
                         result.scores["val_recon_mae"])
                if not math.isfinite(value):
                    raise DivergenceError(f"non-finite validation objective {value}")
                trial.report(value, epoch - 1)
                if trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            history = fit(trainer, cfg.tune.epochs, lambda t: validation_metrics(t, val_images, val_labels, trial_cfg),
                          every=1, on_epoch=report).val_history
            value = history[-1]["val_objective"]
            path = class_grid(trainer.sample, self.class_names, 6, cfg.seed, LOG_DIR / f"tune_trial_{trial.number:03d}.png",
                              f"trial {trial.number}: objective {value:.2f}")
            mlflow.log_artifact(str(path), artifact_path="samples")
            mlflow.log_metric("objective", value)
            return value
        except DivergenceError as err:
            state = "PRUNED"
            log.warning("trial %d diverged, pruned: %s", trial.number, err)
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            state, status = "FAIL", "KILLED"
            raise
        except BaseException:
            state, status = "FAIL", "FAILED"
            raise
        finally:
            mlflow.set_tag("optuna_state", state)
            mlflow.end_run(status=status)


