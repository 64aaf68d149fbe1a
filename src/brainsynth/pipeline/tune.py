"""tune: an Optuna study over ``tune.search_space``; best parameters → models/tune/best_params.json.

One MLflow run for the study, with a nested run per trial (params, per-epoch objective, final
state, small sample grid). ``tune.enabled: false`` or ``tune.n_trials: 0`` writes empty best
parameters, so ``train`` uses params.yaml as written.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna

from brainsynth.config import Config, SearchDimension
from brainsynth.data import prepared
from brainsynth.engine import DivergenceError, Trainer
from brainsynth.pipeline.common import atomic_dir, stage_run, write_json_atomic, write_metrics
from brainsynth.validation import validation_metrics
from brainsynth.viz import labelled_grid

OUT_DIR = Path("models/tune")
BEST_FILE = "best_params.json"


def suggest(trial: optuna.Trial, name: str, dim: SearchDimension):
    if dim.type == "categorical":
        return trial.suggest_categorical(name, dim.choices)
    if dim.type == "int":
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.tune.epochs)
    return optuna.pruners.NopPruner()


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(2, min(10, cfg.tune.n_trials // 2)))


def run(cfg: Config, log: logging.Logger) -> None:
    data = prepared.load("data/prepared")
    upstream = {"upstream_run_id": data.meta.get("mlflow_run_id", ""), "upstream_stage": "prepare"}
    started = time.perf_counter()
    with stage_run("tune", cfg, upstream) as parent:
        enabled = cfg.tune.enabled and cfg.tune.n_trials > 0 and bool(cfg.tune.search_space)
        result = {"params": {}, "value": None, "trial": None, "mlflow_run_id": parent.info.run_id, "enabled": enabled}
        summary = {"n_trials": 0, "n_complete": 0, "n_pruned": 0, "n_failed": 0}
        if not enabled:
            log.info("tuning disabled (tune.enabled=%s, n_trials=%d): train uses params.yaml as written", cfg.tune.enabled, cfg.tune.n_trials)
        else:
            study = run_study(cfg, data, log)
            states = [t.state for t in study.trials]
            summary = {
                "n_trials": len(states),
                "n_complete": states.count(optuna.trial.TrialState.COMPLETE),
                "n_pruned": states.count(optuna.trial.TrialState.PRUNED),
                "n_failed": states.count(optuna.trial.TrialState.FAIL),
            }
            if summary["n_complete"]:
                best = study.best_trial
                result.update(params=best.params, value=best.value, trial=best.number)
                mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
                mlflow.log_metric("best_value", best.value)
                log_study_plots(study, log)
            else:
                log.warning("no trial completed: train uses params.yaml as written")
        with atomic_dir(OUT_DIR) as staging:
            write_json_atomic(staging / BEST_FILE, result)
        seconds = time.perf_counter() - started
        metrics = {**summary, "best_value": result["value"], "seconds": round(seconds, 2)}
        write_metrics("tune", metrics)
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_artifact(str(OUT_DIR / BEST_FILE))
        log.info("tune finished in %.1fs: %s; best %s = %s", seconds, summary, result["params"], result["value"])


def search_space(cfg: Config, log: logging.Logger) -> dict[str, SearchDimension]:
    """The dimensions to search. ``loss.adv_weight: 0`` asks for a plain VAE, so the adversarial
    weight is not searched then (a tuned value would silently turn the GAN back on)."""
    space = dict(cfg.tune.search_space)
    if cfg.loss.adv_weight == 0 and space.pop("loss.adv_weight", None) is not None:
        log.info("loss.adv_weight = 0 (plain VAE): not searching loss.adv_weight")
    return space


def run_study(cfg: Config, data: prepared.PreparedData, log: logging.Logger) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train_images, train_labels = data.split("train")
    if cfg.tune.max_train_images and len(train_images) > cfg.tune.max_train_images:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(train_images), cfg.tune.max_train_images, replace=False))
        train_images, train_labels = train_images[pick], train_labels[pick]
    val_images, val_labels = data.split("val")
    if len(val_images) == 0:
        val_images, val_labels = train_images, train_labels
        log.warning("no validation split (data.val_fraction = 0): tuning scores on training images")

    space = search_space(cfg, log)
    study = optuna.create_study(direction="minimize", sampler=make_sampler(cfg), pruner=make_pruner(cfg))

    def objective(trial: optuna.Trial) -> float:
        overrides = {name: suggest(trial, name, dim) for name, dim in space.items()}
        trial_cfg = cfg.with_overrides({**overrides, "train.epochs": cfg.tune.epochs})
        with mlflow.start_run(run_name=f"trial-{trial.number:03d}", nested=True, tags={"stage": "tune-trial", "optuna_trial": str(trial.number)}):
            mlflow.log_params(overrides)
            state = "COMPLETE"
            try:
                trainer = Trainer(trial_cfg, train_images, train_labels, len(data.class_names))
                value = math.inf
                for epoch in range(cfg.tune.epochs):
                    stats = trainer.train_epoch()
                    scores = validation_metrics(trainer, val_images, val_labels, cfg.tune.eval_images, cfg.seed, cfg.tune.recon_weight)
                    value = scores["val_objective"]
                    mlflow.log_metrics({**{f"train_{k}": v for k, v in stats.losses.items()}, **scores}, step=epoch + 1)
                    log.info("trial %d epoch %d: objective %.3f (swd %.2f, mae %.2f)", trial.number, epoch + 1, value, scores["val_swd"], scores["val_recon_mae"])
                    trial.report(value, epoch)
                    if trial.should_prune():
                        state = "PRUNED"
                        raise optuna.TrialPruned()
                samples = trainer.sample(np.repeat(np.arange(len(data.class_names)), 6), cfg.seed)
                rows = [samples[k * 6 : (k + 1) * 6] for k in range(len(data.class_names))]
                path = Path(f"logs/tune_trial_{trial.number:03d}.png")
                labelled_grid(rows, data.class_names, path, title=f"trial {trial.number}: objective {value:.2f}")
                mlflow.log_artifact(str(path), artifact_path="samples")
                return value
            except DivergenceError as err:
                state = "PRUNED"
                log.warning("trial %d diverged, pruned: %s", trial.number, err)
                raise optuna.TrialPruned(str(err)) from None
            except optuna.TrialPruned:
                raise
            except Exception:
                state = "FAIL"
                raise
            finally:
                mlflow.set_tag("optuna_state", state)

    study.optimize(objective, n_trials=cfg.tune.n_trials, catch=(RuntimeError,))
    return study


def log_study_plots(study: optuna.Study, log: logging.Logger) -> None:
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history, "timeline": ovm.plot_timeline}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) >= 2 and len(study.best_params) >= 1:
        plots["param_importances"] = ovm.plot_param_importances
        plots["parallel_coordinate"] = ovm.plot_parallel_coordinate
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            mlflow.log_figure(figure, f"optuna/{name}.png")
            plt.close(figure)
        except Exception as err:  # a plot Optuna cannot draw for this study must not fail the stage
            log.warning("optuna plot %s skipped: %s", name, err)
