"""Process plumbing shared by the stages and the processes they start (tuning workers, torchrun
ranks): logging to file and terminal, the one-run-per-stage lock, dying with the parent, and
signals as ``KeyboardInterrupt``. No MLflow, no torch: everything above may import it."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from brainsynth.paths import LOG_DIR

NOISY_LOGGERS = ("alembic", "mlflow", "optuna", "matplotlib", "PIL", "urllib3", "git")


def setup_logging(stage: str, rank: int = 0, worker: int | None = None) -> Path:
    """``logs/<stage>.log`` and the terminal. In a data-parallel job, the other ranks write
    ``logs/<stage>.rank<N>.log`` and show only warnings and errors, so the terminal is not N-fold.
    A worker process of a stage (tune's ``worker``) writes ``logs/<stage>_worker<N>.log``."""
    LOG_DIR.mkdir(exist_ok=True)
    if worker is not None:
        path, prefix = LOG_DIR / f"{stage}_worker{worker}.log", f"worker {worker} "
    else:
        path, prefix = LOG_DIR / (f"{stage}.log" if rank == 0 else f"{stage}.rank{rank}.log"), f"[rank {rank}] " if rank else ""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.addFilter(lambda record: not getattr(record, "file_only", False))  # tracebacks: the log file only
    if rank:
        terminal.setLevel(logging.WARNING)
    for handler in (logging.FileHandler(path, mode="w"), terminal):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def stage_lock(stage: str):
    """An exclusive lock on ``logs/<stage>.lock`` for as long as this process lives (the open file
    is the lock; the kernel drops it when the process ends, however it ends). A second run of the
    same stage in this folder — ``python stages/prepare.py`` while ``dvc repro`` runs prepare — would
    write the same outputs: it stops at once with one line instead."""
    import fcntl

    LOG_DIR.mkdir(exist_ok=True)
    handle = open(LOG_DIR / f"{stage}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        print(f"error: the {stage} stage is already running in this folder ({holder}); wait for it or stop it", file=sys.stderr)
        sys.exit(1)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``). A
    torchrun agent killed with SIGKILL (the OOM killer, a scheduler) cannot stop its workers itself:
    without this they trained on, wrote the model and moved the registry alias after DVC had already
    reported the stage failed. SIGTERM ends the stage like Ctrl-C (the MLflow run KILLED). Returns
    False where the call does not exist (not Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the parent died before the call: the signal will never come
        os.kill(os.getpid(), sig)
    return True


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
