"""tune: an Optuna study over ``tune.search_space`` → models/tune/best_params.yaml, a params file
that dvc.yaml lists under the train stage's ``params:``, so ``dvc params diff`` and ``dvc exp show``
show the values train actually used.

* Persistence: the study lives in ``tune.storage`` — by default the journal file
  ``models/tune/study.journal`` (the DVC out is ``persist: true``, so DVC keeps it across re-runs), or
  any RDB URL (``postgresql://…``, ``sqlite:///…``) shared by several machines. The study name is a
  fingerprint of everything that decides a trial's result (params except the trial count and worker
  settings, the prepared data, the training code): re-running after a kill continues the same study
  up to ``tune.n_trials`` finished (complete or pruned) trials; a changed search space starts a new one.
* Parallelism: ``tune.n_workers`` processes share the storage, each on its own GPU when there are
  several (a worker per GPU is the sensible setting then).
* Pruning: every trial reports its objective each epoch to ``tune.pruner``; a non-finite loss ends the
  trial as PRUNED instead of crashing the study.
* MLflow: one parent run per study (re-opened when the study resumes), a nested run per trial with its
  params, per-epoch objective, final Optuna state and a sample grid; the parent logs the best
  params/value and Optuna's history, importance, parallel-coordinate and timeline plots.
* The first trial of a new study uses the params.yaml values, and the tuned values replace them only
  when the best trial beats that trial by ``tune.min_improvement`` (relative): the short-horizon
  objective is noisy, and a trial that wins by noise can train a much worse final model.
* A trial trains ``tune.epochs`` epochs with the final run's KL warm-up and adversarial start (in
  epochs; scaling both to the trial's budget ranked final scores worse when measured).
* ``tune.enabled: false`` or ``tune.n_trials: 0`` writes empty best parameters: train uses params.yaml.
"""

from __future__ import annotations

import logging
import time
import warnings

import mlflow
import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from brainsynth import provenance, tracking
from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.files import write_json_atomic, write_text_atomic
from brainsynth.paths import BEST_PARAMS, PREPARED_DIR, STUDY_JOURNAL, TUNED_FOR
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics
from brainsynth.training import objective
from brainsynth.tuning.search_space import baseline_params, decoded_params, search_space
from brainsynth.tuning.study import (
    ProgressLog,
    chosen_trial,
    count_states,
    fail_stale_trials,
    make_pruner,
    make_sampler,
    open_storage,
    stop_callbacks,
    study_done,
    study_name,
)
from brainsynth.tuning.trial import Objective
from brainsynth.tuning.workers import run_workers

MIN_TRIALS_FOR_IMPORTANCES = 8


def run(cfg: Config, log: logging.Logger) -> None:
    data = prepared.load(PREPARED_DIR)
    upstream = upstream_tags("prepare", PREPARED_DIR)
    started = time.perf_counter()
    enabled = cfg.tune.enabled and cfg.tune.n_trials > 0 and bool(cfg.tune.search_space)
    study, resume_run_id = None, None
    if enabled:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=study_name(cfg), storage=open_storage(cfg), direction=objective.DIRECTION, load_if_exists=True)
        previous = study.user_attrs.get("mlflow_run_id")
        resume_run_id = _unfinished_run(previous)
        if resume_run_id:
            log.info("continuing study %s (%s) in MLflow run %s", study.study_name, count_states(study), resume_run_id)
        elif previous and count_states(study)["n_trials"]:
            # The earlier run finished (and logged its choice): it stays as it was, and this
            # continuation (e.g. a raised tune.n_trials) gets its own run, linked by tag.
            log.info("continuing study %s (%s) in a new MLflow run; the earlier run %s stays as it finished",
                     study.study_name, count_states(study), previous)
    with mlflow_run("tune", cfg, upstream, resume_run_id=resume_run_id) as parent:
        if enabled and not resume_run_id and previous:
            mlflow.set_tags({"continues_run": previous, "optuna_study": study.study_name})
        chosen_params: dict = {}
        summary = {"n_trials": 0, "n_complete": 0, "n_pruned": 0, "n_failed": 0}
        trials_this_run, chosen_value = 0, None
        if not enabled:
            log.info("tuning disabled (tune.enabled=%s, n_trials=%d): train uses params.yaml as written", cfg.tune.enabled, cfg.tune.n_trials)
        else:
            before = optimise(study, cfg, data, parent.info.run_id, log)
            counts = count_states(study)
            trials_this_run = counts["n_trials"] - before
            summary = {k: counts[k] for k in summary}
            if counts["n_complete"]:
                best = study.best_trial
                chosen = chosen_trial(study, baseline_params(cfg, search_space(cfg, quiet=True)), cfg.tune.min_improvement)
                if chosen.number != best.number:
                    log.info("best trial %d (%.4g) beats the params.yaml trial %d (%.4g) by less than tune.min_improvement = %g: "
                             "train keeps the params.yaml values", best.number, best.value, chosen.number, chosen.value,
                             cfg.tune.min_improvement)
                chosen_params = decoded_params(chosen.params, cfg)
                chosen_value = chosen.value
                # chosen_*: the trial whose values train uses; best_trial_*: the lowest objective, which
                # is another trial when it beats params.yaml's by less than tune.min_improvement.
                mlflow.log_params({f"chosen.{k}": v for k, v in chosen.params.items()})
                mlflow.log_metrics({"best_trial_value": best.value, "best_trial": best.number, "chosen_trial": chosen.number,
                                    "chosen_value": chosen.value})
                log_study_plots(study, log)
            else:
                log.warning("no trial completed: train uses params.yaml as written")
        write_best_params(chosen_params)
        write_json_atomic(TUNED_FOR, provenance.tuning_inputs(cfg))
        tracking.tag_outputs(BEST_PARAMS)
        seconds = time.perf_counter() - started
        metrics_out = {**summary, "trials_this_run": trials_this_run, "chosen_value": chosen_value, "seconds": round(seconds, 2)}
        # metrics/tune.json: the study's outcome; this run's trial count and time go to MLflow only
        write_metrics("tune", {"tune": {k: metrics_out[k] for k in ("chosen_value", "n_complete", "n_pruned", "n_failed")}})
        mlflow.log_metrics({k: v for k, v in metrics_out.items() if v is not None})
        mlflow.log_artifact(str(BEST_PARAMS))
        log.info("tune finished in %.1fs: %s; train uses %s (objective %s)", seconds, summary, chosen_params or "params.yaml", chosen_value)


def optimise(study: optuna.Study, cfg: Config, data: prepared.PreparedData, parent_run_id: str, log: logging.Logger) -> int:
    """Run the study up to ``tune.n_trials`` finished trials, here or in worker processes.
    Returns the number of trials it had before."""
    study.set_user_attr("mlflow_run_id", parent_run_id)
    mlflow.set_tags({"optuna_study": study.study_name, "optuna_storage": cfg.tune.storage or str(STUDY_JOURNAL),
                     "objective": cfg.tune.objective, "direction": objective.DIRECTION})
    stale = fail_stale_trials(study, cfg)
    if stale:
        log.warning("%d trial(s) left running by an interrupted run marked FAIL", stale)
    before = count_states(study)["n_trials"]
    if before == 0:
        baseline = baseline_params(cfg, search_space(cfg, quiet=True))
        study.enqueue_trial(baseline, skip_if_exists=True)
        log.info("first trial: the params.yaml values %s", baseline)
    if study_done(study, cfg.tune.n_trials):
        log.info("study %s already has %d finished trials: nothing to run", study.study_name, cfg.tune.n_trials)
    elif cfg.tune.n_workers > 1:
        log.info("study %s: %d workers on %s", study.study_name, cfg.tune.n_workers, cfg.tune.storage or STUDY_JOURNAL)
        run_workers(cfg, study.study_name, parent_run_id, stream=before)
    else:
        study.sampler = make_sampler(cfg, stream=before)
        study.pruner = make_pruner(cfg)
        study.optimize(Objective(cfg, data, parent_run_id), callbacks=[*stop_callbacks(cfg.tune.n_trials), ProgressLog(cfg.tune.n_trials)],
                       catch=(RuntimeError,))
    return before


def write_best_params(params: dict) -> None:
    """``models/tune/best_params.yaml``: the chosen values as a nested params file ({} = none)."""
    nested: dict = {}
    for key, value in sorted(params.items()):
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    header = "# written by the tune stage: the values train lays over params.yaml (dvc params diff shows them)\n"
    write_text_atomic(BEST_PARAMS, header + yaml.safe_dump(nested, sort_keys=True, default_flow_style=None))


def _unfinished_run(run_id: str | None) -> str | None:
    """``run_id`` when it exists in the current tracking store (a study may outlive a store) and did
    not finish (it was interrupted, killed or failed): such a run is reopened and continued."""
    if not run_id:
        return None
    try:
        status = MlflowClient().get_run(run_id).info.status
    except Exception:
        return None
    return None if status == "FINISHED" else run_id


def log_study_plots(study: optuna.Study, log: logging.Logger) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history, "timeline": ovm.plot_timeline}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # fANOVA importances from a handful of trials are noise presented as a finding
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCES and len(study.best_params) >= 1:
        plots["param_importances"] = ovm.plot_param_importances
        plots["parallel_coordinate"] = ovm.plot_parallel_coordinate
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            mlflow.log_figure(figure, f"optuna/{name}.png", save_kwargs={"bbox_inches": "tight"})
            plt.close(figure)
        except Exception as err:  # a plot Optuna cannot draw for this study must not fail the stage
            log.warning("optuna plot %s skipped: %s", name, err)
