"""MLflow bookkeeping a user sees: orphaned runs closed, the UI's runs view, the results headline,
no warnings the user cannot act on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from brainsynth import tracking
from brainsynth.headline import headline
from helpers import REPO, repo_config


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.setup(repo_config({"mlflow.experiment": "tracking-test"}))
    yield experiment_id
    while mlflow.active_run():
        mlflow.end_run()


def test_orphaned_runs_of_dead_processes_are_closed_and_live_ones_kept(store):
    client = MlflowClient()
    host = tracking.process_id().rpartition(":")[0]
    dead = client.create_run(store, tags={"stage": "evaluate", "process": f"{host}:{2**22 + 12345}"}).info.run_id
    live = client.create_run(store, tags={"stage": "evaluate", "process": tracking.process_id()}).info.run_id
    elsewhere = client.create_run(store, tags={"stage": "evaluate", "process": "another-host:1"}).info.run_id
    other_stage = client.create_run(store, tags={"stage": "train", "process": f"{host}:{2**22 + 12345}"}).info.run_id
    assert tracking.close_orphaned_runs("evaluate") == [dead]
    assert client.get_run(dead).info.status == "KILLED" and "orphaned" in client.get_run(dead).data.tags["error"]
    for run_id in (live, elsewhere, other_stage):
        assert client.get_run(run_id).info.status == "RUNNING"


def test_ui_url_opens_the_runs_view_of_the_experiment(store):
    url = tracking.runs_view_url(experiment="tracking-test")
    assert url == f"http://127.0.0.1:5000/#/experiments/{store}?workflowType=machine_learning"
    assert tracking.runs_view_url(experiment="no-such-experiment") == "http://127.0.0.1:5000"


def test_headline_is_a_few_lines_with_directions_and_references():
    metrics = json.loads((REPO / "metrics" / "evaluate.json").read_text())
    lines = headline(metrics)
    assert 6 <= len(lines) <= 10 and all(len(line) <= 140 for line in lines)
    text = "\n".join(lines)
    assert f"swd {metrics['swd']:.2f} ↓ (real-vs-real {metrics['swd_real_baseline']:.2f})" in text
    assert f"chance {metrics['chance_balanced_accuracy']:.3f}" in text and "↑" in text
    no_utility = {k: v for k, v in metrics.items() if not k.startswith(("trtr", "tstr", "augment"))}
    assert "utility" not in "\n".join(headline(no_utility))  # evaluate.utility_epochs: 0 leaves the line out


def test_serving_defines_its_model_without_mlflows_type_hint_warning():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-W", "always", "-c", "import brainsynth.serving; import warnings; warnings.warn('still shown')"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "type hints" not in result.stderr and "still shown" in result.stderr


def test_make_ui_prints_the_runs_view(tmp_path):
    result = subprocess.run([sys.executable, "-m", "brainsynth.tracking"], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MLflow UI, the runs of this project: http://127.0.0.1:5000")
    assert Path(REPO / "Makefile").read_text().count("python -m brainsynth.tracking") == 1
