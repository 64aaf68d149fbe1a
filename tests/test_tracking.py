"""MLflow bookkeeping a user sees: orphaned runs closed, the UI's runs view, the results headline,
no warnings the user cannot act on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from helpers import REPO, repo_config
from mlflow.tracking import MlflowClient

from brainsynth import tracking
from brainsynth.evaluation.headline import flattened, grouped, headline


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
    grouped = json.loads((REPO / "metrics" / "evaluate.json").read_text())
    assert list(grouped)[0] == "realism"  # the committed file is grouped; the headline reads it as it is
    lines = headline(grouped)
    metrics = flattened(grouped)
    assert 6 <= len(lines) <= 10 and all(len(line) <= 140 for line in lines)
    text = "\n".join(lines)
    assert f"swd {metrics['swd']:.2f} ↓ (real-vs-real {metrics['swd_real_baseline']:.2f})" in text
    assert f"chance {metrics['chance_balanced_accuracy']:.3f}" in text and "↑" in text
    no_utility = {k: v for k, v in metrics.items() if k not in grouped["utility"]}
    assert "utility" not in "\n".join(headline(no_utility))  # evaluate.utility_epochs: 0 leaves the line out


def test_grouped_metrics_lead_with_the_headline_numbers():
    """`dvc exp show` shows the keys in file order: each group opens with its headline number
    and reference (swd before its per-scale and per-class values)."""
    metrics = flattened(json.loads((REPO / "metrics" / "evaluate.json").read_text()))
    groups = grouped(metrics)
    assert list(groups["realism"])[:4] == ["swd", "swd_real_baseline", "feature_fd", "feature_fd_real"]
    assert list(groups["anatomy"])[0] == "morph_distance_ratio"
    assert list(groups["utility"])[0] == ("judge_tstr_ratio" if "judge_tstr_ratio" in metrics else "augment_gain_mean")  # the independent judge leads
    assert list(groups["reconstruction"])[0] == "recon_psnr"
    assert flattened(groups) == {k: v for k, v in metrics.items()}  # nothing lost or renamed


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


def test_champion_moves_only_when_beaten_on_the_same_data(store):
    from brainsynth.registry import CHAMPION, promote, version_of_run

    client = MlflowClient()
    client.create_registered_model("m")

    def register() -> tuple[str, str]:
        run_id = client.create_run(store).info.run_id
        return client.create_model_version("m", source="file:///nowhere", run_id=run_id).version, run_id

    def champion() -> str:
        return client.get_model_version_by_alias("m", CHAMPION).version

    first, _ = register()
    assert "new champion" in promote("m", first, {"swd": 30.0}, "swd", "data-a") and champion() == first
    worse, _ = register()
    assert "does not beat" in promote("m", worse, {"swd": 35.0}, "swd", "data-a") and champion() == first
    better, _ = register()
    assert "new champion" in promote("m", better, {"swd": 25.0, "recon_psnr": 22.0}, "swd", "data-a") and champion() == better
    assert client.get_model_version("m", better).tags["eval.recon_psnr"] == "22"
    other_data, run_id = register()
    assert "other data" in promote("m", other_data, {"swd": 10.0}, "swd", "data-b") and champion() == better
    assert version_of_run("m", run_id) == str(other_data) and version_of_run("m", "no-such-run") is None
    higher_is_better, _ = register()
    # the champion was never scored on the newly chosen metric: not comparable, so it stays
    assert "not compared" in promote("m", higher_is_better, {"tstr_balanced_accuracy_mean": 0.9}, "tstr_balanced_accuracy_mean", "data-a")
    assert champion() == better
    client.set_model_version_tag("m", better, "eval.tstr_balanced_accuracy_mean", "0.5")
    assert "new champion" in promote("m", higher_is_better, {"tstr_balanced_accuracy_mean": 0.9}, "tstr_balanced_accuracy_mean", "data-a")
    assert champion() == higher_is_better  # higher is better for TSTR


def test_logging_the_dataset_warns_of_nothing(store, tmp_path, monkeypatch):
    """every run printed MLflow's "dataset source can be interpreted in multiple ways" warning."""
    import warnings

    import numpy as np

    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "dataset.npz").write_bytes(b"x")
    monkeypatch.setattr(tracking, "repo_root", lambda: tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mlflow.start_run(experiment_id=store) as run:
            tracking.log_dataset(np.zeros((2, 4, 4), np.uint8), np.zeros(2, int), Path("data/prepared"), "training")
    assert not [w for w in caught if "interpreted in multiple ways" in str(w.message)]
    assert MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs


def test_an_unexpected_error_is_one_line_on_the_terminal_and_a_traceback_in_the_log(store, tmp_path, capsys):
    """the promised one-line error used to follow 40–70 lines of traceback on the terminal."""
    from brainsynth.pipeline.stage import run_stage

    def body(cfg, log):
        log.info("working")
        raise RuntimeError("disk on fire")

    with pytest.raises(SystemExit):
        run_stage("evaluate", body, cfg=repo_config({"mlflow.experiment": "tracking-test"}))
    err = capsys.readouterr().err
    assert "Traceback" not in err and "working" in err
    assert err.strip().splitlines()[-1] == "error: evaluate failed: RuntimeError: disk on fire (traceback in logs/evaluate.log)"
    assert "Traceback" in (tmp_path / "logs" / "evaluate.log").read_text()


def test_a_second_run_of_a_stage_in_the_same_folder_stops_at_once(store, capsys):
    """`python stages/prepare.py` while `dvc repro` ran prepare let both write the same outputs."""
    from brainsynth.pipeline.stage import run_stage, stage_lock

    ran = []
    running = stage_lock("evaluate")  # the first run holds the lock
    with pytest.raises(SystemExit) as exit_info:
        run_stage("evaluate", lambda cfg, log: ran.append(1), cfg=repo_config({"mlflow.experiment": "tracking-test"}))
    assert exit_info.value.code == 1 and not ran
    assert f"error: the evaluate stage is already running in this folder (pid {os.getpid()})" in capsys.readouterr().err
    running.close()
    run_stage("evaluate", lambda cfg, log: ran.append(1), cfg=repo_config({"mlflow.experiment": "tracking-test"}))
    assert ran == [1]


def test_a_damaged_mlflow_db_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    """a damaged mlflow.db gave a SQLAlchemy traceback."""
    from brainsynth.pipeline.stage import run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "mlflow.db").write_bytes(b"\x13" * 5000)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(SystemExit):
        run_stage("evaluate", lambda cfg, log: None, cfg=repo_config({"mlflow.experiment": "tracking-test"}))
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {tmp_path / 'mlflow.db'}: not a usable MLflow store") and "mv " in err[-1]
    assert not any("Traceback" in line for line in err)
