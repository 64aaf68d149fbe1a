"""The Optuna study behind the tune stage: its name (a fingerprint of what decides a trial's result),
storage (a journal file or an RDB shared by machines), sampler, pruner, stopping rule, stale trials,
and which trial's values train uses."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from brainsynth import provenance, tracking
from brainsynth.config import Config
from brainsynth.errors import StageError
from brainsynth.files import digest
from brainsynth.paths import PREPARED_DIR, STUDY_JOURNAL

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

log = logging.getLogger("brainsynth.tune")


def study_name(cfg: Config) -> str:
    """``tune-`` + a fingerprint of the tuning inputs (params), the prepared data and the tune
    stage's code (its dvc.yaml deps): an unchanged study continues, a changed one starts afresh."""
    return "tune-" + provenance.fingerprint(12, cfg=provenance.tuning_inputs(cfg), data=digest(PREPARED_DIR),
                                            code=provenance.code_digest("tune"))


CONNECT_TIMEOUT_S = 10


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
                # A host that accepts the connection but never answers would otherwise hang tune
                # (deaf to SIGTERM) for minutes: libpq gives up after CONNECT_TIMEOUT_S.
                engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}} if target.startswith("postgresql") else None
                return optuna.storages.RDBStorage(target, engine_kwargs=engine, heartbeat_interval=beat, grace_period=3 * beat,
                                                  heartbeat_stale_trial_callback=close_stale_trial_run)
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


def chosen_trial(study: optuna.Study, baseline: dict, min_improvement: float) -> optuna.trial.FrozenTrial:
    """The trial whose params train uses: the best one, unless the completed trial that ran the
    params.yaml values (``baseline``) is within ``min_improvement`` (relative, of its objective) of
    it — then that one. Objectives are minimised distances/errors (>= 0)."""
    best = study.best_trial
    reference = next((t for t in study.trials if t.state == TrialState.COMPLETE and t.params == baseline), None)
    if reference is None or reference.number == best.number:
        return best
    return best if best.value < reference.value * (1.0 - min_improvement) else reference


