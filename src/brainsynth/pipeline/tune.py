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
* A trial trains ``tune.epochs`` epochs with the final run's KL warm-up and adversarial start, or
  (``tune.scale_schedule``) with both scaled by ``tune.epochs / train.epochs``; unscaled trials
  ranked final scores better (benchmarks/README.md), hence the default.
* ``tune.enabled: false`` or ``tune.n_trials: 0`` writes empty best parameters: train uses params.yaml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from brainsynth import downstream, engine, inference, losses, metrics, nets, objective, search_space as search_space_module, tracking
from brainsynth.config import Config, tuning_inputs, validate
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.engine import DivergenceError, Trainer
from brainsynth.files import write_json_atomic, write_text_atomic
from brainsynth.objective import class_judge, validation_metrics
from brainsynth.paths import BEST_PARAMS, LOG_DIR, PREPARED_DIR, STUDY_JOURNAL, TUNED_FOR
from brainsynth.pipeline.stage import NOISY_LOGGERS, StageError, mlflow_run, upstream_tags, write_metrics
from brainsynth.search_space import baseline_params, decoded_params, search_space, suggest, trial_config
from brainsynth.viz import class_grid

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MIN_TRIALS_FOR_IMPORTANCES = 8
# Keys that do not change what a trial computes: changing them continues the same study.
_TRIAL_CODE = (engine, nets, losses, objective, downstream, metrics, inference, search_space_module)

log = logging.getLogger("brainsynth.tune")


# --- the study: name, storage, sampler, pruner ---------------------------------------------------


def study_name(cfg: Config) -> str:
    relevant = tuning_inputs(cfg)
    files = [Path(m.__file__) for m in _TRIAL_CODE] + [Path(__file__)]  # this module holds the trial loop
    code = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    blob = json.dumps({"cfg": relevant, "data": tracking.digest(PREPARED_DIR), "code": code}, sort_keys=True, default=str)
    return "tune-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def open_storage(cfg: Config) -> optuna.storages.BaseStorage:
    """``tune.storage``: '' = journal file in models/tune/; an RDB URL; or a path to a journal file."""
    target = cfg.tune.storage
    if target.startswith("postgresql://"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2.
        target = "postgresql+psycopg2://" + target[len("postgresql://"):]
    try:
        if "://" in target:
            # Heartbeats let Optuna fail the trials of a worker that died (on any machine sharing the DB).
            beat = cfg.tune.heartbeat_seconds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(target, heartbeat_interval=beat, grace_period=3 * beat,
                                                  failed_trial_callback=close_stale_trial_run)
        path = Path(target) if target else STUDY_JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    except Exception as err:  # bad URL, missing DB driver, unreachable server, unwritable folder
        raise StageError(f"tune.storage {target!r}: cannot open the Optuna storage ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def close_stale_trial_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat found ``trial`` abandoned (its worker died, on any machine) and made it
    FAIL: its MLflow run, left RUNNING by the dead worker, becomes KILLED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    log.warning("trial %d lost its worker %s: marked FAIL", trial.number, trial.user_attrs.get("worker", "?"))
    if run_id:
        try:
            tracking.mark_killed(run_id, "its worker stopped beating (killed or lost)", tags={"optuna_state": "FAIL"})
        except Exception as err:  # the run may live in another tracking store
            log.warning("could not close the MLflow run %s of trial %d: %s", run_id, trial.number, err)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.tune.epochs)
    return optuna.pruners.NopPruner()


def make_sampler(cfg: Config, stream: int = 0) -> optuna.samplers.BaseSampler:
    """``stream`` separates the random draws of parallel workers and of resumed runs (the same seed
    would propose the same first trials again)."""
    seed = int(np.random.default_rng([cfg.seed, stream]).integers(2**31))
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, cfg.tune.n_trials // 2)))


def count_states(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"n_trials": len(states), "n_complete": states.count(TrialState.COMPLETE),
            "n_pruned": states.count(TrialState.PRUNED), "n_failed": states.count(TrialState.FAIL),
            "n_running": states.count(TrialState.RUNNING)}


def stop_callbacks(n_trials: int) -> list:
    """Stop once ``n_trials`` trials finished (complete or pruned) — counted over the whole study,
    so resumed runs and parallel workers share the budget — or as many failed."""
    return [optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.FAIL,))]


class ProgressLog:
    """Optuna callback: one line per finished trial — how many of ``tune.n_trials`` are done, the
    best value so far and, from the pace of this run, about how long the rest will take."""

    def __init__(self, n_trials: int):
        self.n_trials, self.started, self.done_here = n_trials, time.perf_counter(), 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.done_here += 1
        counts = count_states(study)
        finished = counts["n_complete"] + counts["n_pruned"]
        try:
            best = f"{study.best_value:.4g} (trial {study.best_trial.number})"
        except ValueError:  # no complete trial yet
            best = "none yet"
        left = max(0, self.n_trials - finished)
        pace = (time.perf_counter() - self.started) / self.done_here
        log.info("trial %d %s: %d/%d finished, best so far %s, about %.0f min left", trial.number, trial.state.name.lower(), finished,
                 self.n_trials, best, left * pace / 60)


def study_done(study: optuna.Study, n_trials: int) -> bool:
    counts = count_states(study)
    return counts["n_complete"] + counts["n_pruned"] >= n_trials or counts["n_failed"] >= n_trials


def fail_stale_trials(study: optuna.Study, cfg: Config) -> int:
    """Trials left RUNNING by a killed stage (journal storage: this machine alone runs the study, and
    no worker is running yet) become FAIL, and their MLflow runs KILLED. RDB storages use Optuna's
    heartbeat instead, since other machines' trials may really be running."""
    if "://" in cfg.tune.storage:
        return 0
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                tracking.mark_killed(run_id, "its tune stage was killed while the trial ran", tags={"optuna_state": "FAIL"})
            except Exception:  # the run may live in another tracking store
                pass
    return len(stale)


# --- one trial -----------------------------------------------------------------------------------


def chosen_trial(study: optuna.Study, baseline: dict, min_improvement: float) -> optuna.trial.FrozenTrial:
    """The trial whose params train uses: the best one, unless the completed trial that ran the
    params.yaml values (``baseline``) is within ``min_improvement`` (relative, of its objective) of
    it — then that one. Objectives are minimised distances/errors (>= 0)."""
    best = study.best_trial
    reference = next((t for t in study.trials if t.state == TrialState.COMPLETE and t.params == baseline), None)
    if reference is None or reference.number == best.number:
        return best
    return best if best.value < reference.value * (1.0 - min_improvement) else reference


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
        self.cfg, self.class_names, self.parent_run_id, self.device = cfg, data.class_names, parent_run_id, device
        self.worker = worker  # who runs the trials (tagged on each, so a study shared by workers and machines can be read)
        self.space = search_space(cfg, quiet)
        self.arrays = trial_data(cfg, data, quiet)
        train_images, train_labels = data.split("train")
        self.judge = class_judge(cfg, train_images, train_labels, len(data.class_names), device or resolve_device(cfg.train.device))

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
            value = math.inf
            for epoch in range(cfg.tune.epochs):
                stats = trainer.train_epoch()
                scores = validation_metrics(trainer, val_images, val_labels, trial_cfg, self.judge)
                value = scores["val_objective"]
                mlflow.log_metrics({**{f"train_{k}": v for k, v in stats.computed_losses().items()}, **scores}, step=epoch + 1)
                log.info("trial %d epoch %d: objective %.3f (swd %.2f, mae %.2f)", trial.number, epoch + 1, value, scores["val_swd"], scores["val_recon_mae"])
                if not math.isfinite(value):
                    raise DivergenceError(f"non-finite validation objective {value}")
                trial.report(value, epoch)
                if trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")
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


# --- workers -------------------------------------------------------------------------------------


def worker_device(cfg: Config, index: int):
    """Worker ``index`` trains on GPU ``index % n_gpus`` when there are several; else the default."""
    import torch

    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        device = torch.device("cuda", index % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def worker_main(raw_cfg: dict, name: str, parent_run_id: str, index: int, tracking_uri: str, stream: int) -> None:
    """Entry point of a worker process (spawned): optimise the shared study until it is done."""
    signal.signal(signal.SIGTERM, _interrupt)
    handler = logging.FileHandler(LOG_DIR / f"tune_worker{index}.log", mode="w")
    for h in (handler, logging.StreamHandler(sys.stderr)):
        h.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s worker {index}: %(message)s", "%H:%M:%S"))
        logging.getLogger().addHandler(h)
    logging.getLogger().setLevel(logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    cfg = validate(raw_cfg, source="tune worker")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.tune.n_workers))
    mlflow.set_tracking_uri(tracking_uri)
    data = prepared.load(PREPARED_DIR)
    study = optuna.load_study(study_name=name, storage=open_storage(cfg), sampler=make_sampler(cfg, stream + index),
                              pruner=make_pruner(cfg))
    objective = Objective(cfg, data, parent_run_id, worker_device(cfg, index), quiet=True,
                          worker=f"{socket.gethostname()}:{os.getpid()}:{index}")
    try:
        if not study_done(study, cfg.tune.n_trials):
            study.optimize(objective, callbacks=[*stop_callbacks(cfg.tune.n_trials), ProgressLog(cfg.tune.n_trials)], catch=(RuntimeError,))
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(cfg: Config, name: str, parent_run_id: str, stream: int) -> None:
    """Start ``tune.n_workers`` processes on the shared study and wait for them; a Ctrl-C or kill of
    the stage stops them (their running trials end FAIL, their MLflow runs KILLED)."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked CUDA or DB state
    args = (cfg.model_dump(mode="json"), name, parent_run_id)
    workers = [context.Process(target=worker_main, args=(*args, i, tracking.tracking_uri(), stream), name=f"tune worker {i}")
               for i in range(cfg.tune.n_workers)]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(60)
        raise
    failed = [(i, w.exitcode) for i, w in enumerate(workers) if w.exitcode != 0]
    if failed:
        i, code = failed[0]
        message = f"tune: worker {i} exited with status {code} (log: {LOG_DIR / f'tune_worker{i}.log'})"
        study = optuna.load_study(study_name=name, storage=open_storage(cfg))
        dead = {f"{socket.gethostname()}:{w.pid}:{i}" for i, w in enumerate(workers) if w.exitcode != 0}
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("worker") in dead:  # its worker is gone for sure: no need to wait for the heartbeat
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                close_stale_trial_run(study, trial)
        if not study_done(study, cfg.tune.n_trials):
            raise StageError(message)
        # The others finished the study: a lost worker (OOM killer, preemption) costs its trial only.
        log.warning("%s; the other workers finished the study", message)


# --- the stage -----------------------------------------------------------------------------------


def run(cfg: Config, log: logging.Logger) -> None:
    data = prepared.load(PREPARED_DIR)
    upstream = upstream_tags("prepare", PREPARED_DIR)
    started = time.perf_counter()
    enabled = cfg.tune.enabled and cfg.tune.n_trials > 0 and bool(cfg.tune.search_space)
    study, resume_run_id = None, None
    if enabled:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(study_name=study_name(cfg), storage=open_storage(cfg), direction=objective.DIRECTION, load_if_exists=True)
        resume_run_id = _existing_run(study.user_attrs.get("mlflow_run_id"))
        if resume_run_id:
            log.info("continuing study %s (%s) in MLflow run %s", study.study_name, count_states(study), resume_run_id)
    with mlflow_run("tune", cfg, upstream, resume_run_id=resume_run_id) as parent:
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
        write_json_atomic(TUNED_FOR, tuning_inputs(cfg))
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


def _existing_run(run_id: str | None) -> str | None:
    """``run_id`` when it exists in the current tracking store (a study may outlive a store)."""
    if not run_id:
        return None
    try:
        MlflowClient().get_run(run_id)
        return run_id
    except Exception:
        return None


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
