"""Worker processes that share one study (``tune.n_workers``), each on its own GPU when there are
several; they log like a stage (``runtime.setup_logging``) and stop like one (SIGTERM → KeyboardInterrupt)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys

import mlflow
import optuna
from optuna.trial import TrialState

from brainsynth import tracking
from brainsynth.config import Config, validate
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.errors import StageError
from brainsynth.paths import LOG_DIR, PREPARED_DIR
from brainsynth.runtime import raise_interrupt, setup_logging
from brainsynth.tuning.study import ProgressLog, close_stale_trial_run, make_pruner, make_sampler, open_storage, stop_callbacks, study_done
from brainsynth.tuning.trial import Objective

log = logging.getLogger("brainsynth.tune")


def worker_device(cfg: Config, index: int):
    """Worker ``index`` trains on GPU ``index % n_gpus`` when there are several; else the default."""
    import torch

    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        device = torch.device("cuda", index % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def worker_main(raw_cfg: dict, name: str, parent_run_id: str, index: int, tracking_uri: str, stream: int) -> None:
    """Entry point of a worker process (spawned): optimise the shared study until it is done."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    setup_logging("tune", worker=index)
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


