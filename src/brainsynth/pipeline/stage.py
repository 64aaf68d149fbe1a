"""What every stage does around its own work: log to file and terminal, open one MLflow run, turn
any failure into a one-line error + FAILED run + non-zero exit, and write outputs atomically so a
failed stage never leaves earlier results half-overwritten.

``run_stage`` is a stage process's entry point; ``mlflow_run`` is the MLflow run inside it."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.tracking import MlflowClient

from brainsynth import config as config_module
from brainsynth import tracking
from brainsynth.config import Config, ConfigError, load
from brainsynth.data.errors import DataError
from brainsynth.device import keep_freed_memory
from brainsynth.errors import CheckpointError, DivergenceError, StageError
from brainsynth.files import write_json_atomic
from brainsynth.paths import LOG_DIR, METRICS_DIR
from brainsynth.runtime import die_with_parent, raise_interrupt, setup_logging, stage_lock  # noqa: F401 (the stages' entry points)

# Set to a folder, every stage writes the params it read to <folder>/<stage>.txt (tests compare
# them with dvc.yaml's declarations).
RECORD_PARAMS_ENV = "BRAINSYNTH_RECORD_PARAMS"

log = logging.getLogger("brainsynth")


# Failures a user can act on: one line, no traceback.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DivergenceError, StageError)


def write_metrics(stage: str, metrics: dict) -> Path:
    """``metrics/<stage>.json``: results DVC compares across experiments. Keys keep the order given
    (groups first-things-first); timings, flags and per-split counts belong in the log and MLflow."""
    path = METRICS_DIR / f"{stage}.json"
    write_json_atomic(path, metrics, sort_keys=False)
    return path


def upstream_tags(stage: str, *inputs: Path) -> dict[str, str]:
    """Lineage tags for a stage run: the MLflow run of ``stage`` that wrote ``inputs`` (found by
    their content digest, so DVC outputs carry no run ids)."""
    return {"upstream_run_id": tracking.find_producer(stage, tracking.digest(*inputs)), "upstream_stage": stage}


def run_stage(stage: str, body: Callable[[Config, logging.Logger], None], cfg: Config | None = None,
              params_path: str = "params.yaml") -> None:
    """Entry point used by ``stages/<stage>.py`` with the config it validated (else it loads
    ``params_path``). Exits non-zero with a one-line error on failure."""
    if cfg is None:
        try:
            cfg = load(params_path)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    # Under torchrun (which sets RANK) only rank 0 logs to MLflow and records what it read; every
    # rank runs the body. Read here rather than through brainsynth.distributed, which would make
    # every stage's code depend on the training-only module.
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    record_dir = os.environ.get(RECORD_PARAMS_ENV) if main else None
    reads = config_module.record_reads() if record_dir else None
    lock = stage_lock(stage) if main else None  # before the log file: the running one writes it
    log_path = setup_logging(stage, rank)
    stage_log = logging.getLogger(f"brainsynth.{stage}")
    # `kill` (SIGTERM, also what schedulers send) ends a stage like Ctrl-C does: the MLflow run is
    # marked KILLED and training keeps its last checkpoint, instead of a run left RUNNING forever.
    previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: it must not outlive its launcher
        die_with_parent()
    keep_freed_memory()  # every stage allocates and frees large tensors in loops (training, classifiers, metrics)
    try:
        if main:
            tracking.setup(cfg)
        body(cfg, stage_log)
        if reads is not None:
            Path(record_dir).mkdir(parents=True, exist_ok=True)
            (Path(record_dir) / f"{stage}.txt").write_text("".join(f"{key}\n" for key in sorted(reads)))
    except KeyboardInterrupt:
        _close_active_runs("KILLED", "interrupted by the user", log_path)
        stage_log.error("%s: interrupted", stage)
        sys.exit(130)
    except USER_ERRORS as err:
        stage_log.error("%s", err)
        _close_active_runs("FAILED", str(err), log_path)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # unexpected: keep the traceback in the log, one line on the terminal
        stage_log.error("%s failed:\n%s", stage, traceback.format_exc(), extra={"file_only": True})
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        _close_active_runs("FAILED", message, log_path)
        print(f"error: {stage} failed: {message} (traceback in {log_path})", file=sys.stderr)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if lock is not None:
            lock.close()


def _close_active_runs(status: str, message: str, log_path: Path) -> None:
    while mlflow.active_run() is not None:
        try:
            mlflow.set_tag("error", message[:4000])
            mlflow.log_artifact(str(log_path))
        except Exception:  # the store itself may be what failed; the status update still matters
            pass
        mlflow.end_run(status=status)


@contextmanager
def mlflow_run(stage: str, cfg: Config, upstream: dict[str, str] | None = None, resume_run_id: str | None = None,
               extra_params: dict | None = None, system_metrics: bool = False):
    """One MLflow run for this stage execution: tags, flat params, the stage log as artifact.

    ``resume_run_id`` reopens an earlier (interrupted) run so its metric history continues.
    ``system_metrics``: MLflow samples CPU, memory (and GPU) use into ``system/*`` metrics.
    Failures propagate to ``run_stage``, which marks the run FAILED.
    """
    closed = tracking.close_orphaned_runs(stage, keep=resume_run_id)
    if closed:
        logging.getLogger(f"brainsynth.{stage}").info("marked %d orphaned %s run(s) KILLED: %s", len(closed), stage, ", ".join(closed))
    if resume_run_id:
        run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=system_metrics)
        mlflow.set_tags({"resumed": "true", tracking.PROCESS_TAG: tracking.process_id(),
                         **{k: v for k, v in tracking.stage_tags(stage).items() if k == "dvc_exp_name"}})
        if "error" in run.data.tags:  # the interruption it recorded is over
            MlflowClient().delete_tag(run.info.run_id, "error")
    else:
        tags = {**tracking.stage_tags(stage, upstream), tracking.PROCESS_TAG: tracking.process_id(),
                "mlflow.note.content": tracking.describe(stage, upstream)}
        run = mlflow.start_run(run_name=tracking.run_name(stage), tags=tags, log_system_metrics=system_metrics)
        mlflow.set_tag(tracking.PIPELINE_RUN_TAG, tracking.pipeline_run(upstream) or run.info.run_id)
        tracking.log_params_flat({**cfg.flat(), **(extra_params or {})})
    yield run
    logging.getLogger(f"brainsynth.{stage}").info("mlflow run %s finished", run.info.run_id)
    for handler in logging.getLogger().handlers:
        handler.flush()
    mlflow.log_artifact(str(LOG_DIR / f"{stage}.log"))
    # A SIGTERM inside end_run used to leave the run RUNNING (and ~130 lines of tracebacks): the
    # signal waits until the run is closed, then ends the stage as usual.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        mlflow.end_run(status="FINISHED")
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
