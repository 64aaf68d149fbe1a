"""A real PostgreSQL cluster and a real ``mlflow server`` (no mocks): the pipeline with two tuning
workers sharing an Optuna study in PostgreSQL, logging through the tracking server, one worker
killed with SIGKILL in the middle of a trial.

Skipped only when the PostgreSQL server programs are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import BIN, TINY_PIPELINE, copy_repo, merged, pipeline_env

from brainsynth.cluster import free_port, mlflow_server, postgres_bin, postgres_cluster

# the tiny pipeline, with a tuning study that outlasts a killed worker by several heartbeats
TINY = merged(TINY_PIPELINE, {
    "mlflow": {"experiment": "servers"},
    "train": {"epochs": 1},
    "tune": {"n_trials": 5, "epochs": 2, "n_workers": 2, "heartbeat_seconds": 1, "pruner": "none"},
    "evaluate": {"utility_epochs": 1, "utility_seeds": 1},
})


PG_BIN = postgres_bin()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL server programs (initdb, pg_ctl) are not installed")]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster on a free loopback port (``brainsynth.cluster``, what ``make cluster-demo``
    starts); yields its base URL (user postgres, trust)."""
    folder = Path(tempfile.mkdtemp(prefix="brainsynth-pg-"))
    try:
        with postgres_cluster(folder) as url:
            yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """``mlflow server`` on PostgreSQL with proxied artifacts; yields its URL."""
    with mlflow_server(f"{postgres}/mlflow", tmp_path_factory.mktemp("server-artifacts"), free_port(),
                       tmp_path_factory.mktemp("server-log") / "mlflow-server.log", env=pipeline_env()) as url:
        yield url


def _kill_a_worker_mid_trial(study_name: str, storage: str, repro: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until a trial of the study is RUNNING in a worker, SIGKILL that worker; its trial number."""
    import optuna

    deadline = time.monotonic() + timeout
    rdb = None  # one storage (one connection pool) for the whole wait: a URL per poll opened a pool per poll
    while time.monotonic() < deadline and repro.poll() is None:  # and ran PostgreSQL out of connections on a slow machine
        if rdb is None and _storage_ready(storage):
            rdb = optuna.storages.RDBStorage(storage)
        try:
            study = optuna.load_study(study_name=study_name, storage=rdb) if study_name else None
        except KeyError:
            study = None
        if study is None:
            names = optuna.get_all_study_names(rdb) if rdb is not None else []
            study_name = names[0] if names else None
        else:
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                worker = trial.user_attrs.get("worker", "")
                if worker.count(":") == 2 and trial.user_attrs.get("mlflow_run_id"):
                    os.kill(int(worker.split(":")[1]), signal.SIGKILL)
                    return trial.number
        time.sleep(0.1)
    raise AssertionError("no trial ran in a worker process")


def _storage_ready(storage: str) -> bool:
    """Whether the stage has finished creating Optuna's tables. Opening the storage through Optuna
    before that would make this observer a second creator, racing the stage on an empty database
    (the very race the stage avoids by creating the study before its workers)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage)
    try:
        if not sqlalchemy.inspect(engine).has_table("alembic_version"):
            return False
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar() > 0
    finally:
        engine.dispose()


def test_pipeline_on_postgresql_and_a_tracking_server_survives_a_killed_worker(postgres, tracking_server, tmp_path):
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    storage = f"{postgres}/optuna"
    work = tmp_path / "repo"
    work.mkdir()
    copy_repo(work, {**TINY, "tune": {**TINY["tune"], "storage": storage}})
    env = pipeline_env({"MLFLOW_TRACKING_URI": tracking_server})
    repro = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed_trial = _kill_a_worker_mid_trial(None, storage, repro)
        output, _ = repro.communicate(timeout=900)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode == 0, output[-4000:]
    assert not (work / "mlflow.db").exists()  # everything went to the server

    # Optuna, through PostgreSQL: the killed worker's trial is FAIL (found by the surviving worker's
    # heartbeat check) and the study still has tune.n_trials finished trials.
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert trials[killed_trial].state == optuna.trial.TrialState.FAIL
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) >= TINY["tune"]["n_trials"]
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    worker_logs = "".join(p.read_text() for p in (work / "logs").glob("tune_worker*.log"))
    assert f"trial {killed_trial} lost its worker" in worker_logs  # the heartbeat path, in the surviving worker

    # MLflow, through the server's REST API
    mlflow.set_tracking_uri(tracking_server)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("servers")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    by_stage: dict[str, list] = {}
    for run in runs:
        by_stage.setdefault(run.data.tags.get("stage"), []).append(run)
    assert {s: len(r) for s, r in by_stage.items() if s != "tune-trial"} == {"prepare": 1, "tune": 1, "train": 1, "evaluate": 1, "generate": 1}
    parent = by_stage["tune"][0]
    trial_runs = by_stage["tune-trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    numbers = [int(r.data.tags["optuna_trial"]) for r in trial_runs]
    assert sorted(numbers) == sorted(set(numbers)) == [t.number for t in trials]  # one nested run per trial, no duplicates
    assert len({r.data.tags["tune_worker"] for r in trial_runs}) == 2  # split across both workers
    killed_run = next(r for r in trial_runs if int(r.data.tags["optuna_trial"]) == killed_trial)
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["optuna_state"] == "FAIL"

    train_run = by_stage["train"][0]
    assert train_run.info.artifact_uri.startswith("mlflow-artifacts:")
    downloaded = Path(client.download_artifacts(train_run.info.run_id, "figures/samples.png", str(tmp_path)))
    assert downloaded.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    versions = client.search_model_versions("name='brainsynth'")
    assert len(versions) == 1 and versions[0].run_id == train_run.info.run_id


def test_make_cluster_demo_once_runs_the_lab_setup_and_leaves_nothing_behind(tmp_path):
    """`make cluster-demo ONCE=1` in a fresh copy: PostgreSQL + mlflow server up, the pipeline with two
    tuning workers and two training processes logged to the server (nothing in the local mlflow.db),
    both servers stopped afterwards; a port in use is a one-line error."""
    import re

    work = tmp_path / "repo"
    work.mkdir()
    copy_repo(work, {})
    (work / ".venv").symlink_to(BIN.parent)  # make's set-up step finds this environment installed
    result = subprocess.run(["make", "cluster-demo", "ONCE=1"], cwd=work, env=pipeline_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"runs in experiment 'brainsynth-cluster': evaluate 1, generate 1, prepare 1, train 1, tune 1, tune-trial [4-5]", out), out[-2000:]
    assert "tuning trials ran in 2 worker processes" in out and "registered model 'brainsynth-cluster': 1 version(s)" in out
    assert not (work / "mlflow.db").exists()
    up = re.search(r"PostgreSQL (\S+) and mlflow server (\S+) are up \(in (\S+)\)", out)
    assert up and not Path(up.group(3)).exists()  # the temporary folder is gone
    with pytest.raises(OSError):  # the server is down
        urllib.request.urlopen(f"{up.group(2)}/health", timeout=2)
    assert not subprocess.run(["pgrep", "-f", up.group(3)], capture_output=True).stdout  # no process of the demo left
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = subprocess.run(["make", "cluster-demo", "ONCE=1", f"PORT={port}"], cwd=work, env=pipeline_env(), capture_output=True,
                                 text=True, timeout=300)
    assert refused.returncode != 0 and f"error: port {port} on 127.0.0.1 is already in use" in refused.stderr
