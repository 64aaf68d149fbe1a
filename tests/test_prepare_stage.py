"""The prepare stage on a user's folder: metrics and report of skipped files, MLflow run status, and
earlier outputs left untouched when a new run fails."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from helpers import write_params
from mlflow.tracking import MlflowClient
from PIL import Image

from brainsynth.data import prepared as prepared_module
from brainsynth.pipeline import prepare
from brainsynth.pipeline.stage import run_stage


def make_folder(root, n_subjects=4, broken=0):
    for cls in ("CN", "AD"):
        for s in range(n_subjects):
            for i in range(3):
                path = root / cls / f"OAS1_{cls}{s:03d}_MR1_mpr-1_{i}.png".replace("CN", "00").replace("AD", "11")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((24, 24), 40 * (i + 1), np.uint8)).save(path)
    for b in range(broken):
        (root / "CN" / f"OAS1_9{b:03d}_MR1_mpr-1_0.png").write_bytes(b"")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")

    def configure(source, **data):
        write_params(tmp_path / "params.yaml", {"mlflow": {"experiment": "prep"},
                                                "data": {"source": str(source), "image_size": 16, "workers": 1, **data}})

    return tmp_path, configure


def runs(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("prep")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_folder_prepare_then_failed_rerun_keeps_outputs(workdir, capsys):
    tmp_path, configure = workdir
    make_folder(tmp_path / "good", broken=1)
    configure(tmp_path / "good", max_bad_fraction=0.2)
    run_stage("prepare", prepare.run)
    metrics = json.loads((tmp_path / "metrics" / "prepare.json").read_text())["data"]
    assert metrics["files"] == 25 and metrics["skipped_empty_file"] == 1 and metrics["n_images"] == 24
    assert metrics["n_subjects"] == 8 and len(prepared_module.load(tmp_path / "data" / "prepared").splits) == 24
    report = (tmp_path / "data" / "prepared" / "skipped.csv").read_text()
    assert "OAS1_9000_MR1_mpr-1_0.png,empty_file" in report
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()}
    metrics_before = (tmp_path / "metrics" / "prepare.json").read_text()

    make_folder(tmp_path / "bad", broken=6)  # 6 of 30 files broken: 20 % > 5 %
    configure(tmp_path / "bad", max_bad_fraction=0.05)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage("prepare", prepare.run)
    assert exit_info.value.code == 1
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "6 of 30 files unusable" in error[0] and "data.max_bad_fraction" in error[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "data" / "prepared").iterdir()} == before
    assert (tmp_path / "metrics" / "prepare.json").read_text() == metrics_before

    client, (first, second) = runs(tmp_path)
    assert first.info.status == "FINISHED" and second.info.status == "FAILED"
    assert "6 of 30 files unusable" in second.data.tags["error"]
    assert "prepare_skipped.csv" in [a.path for a in client.list_artifacts(second.info.run_id)]


def test_too_few_subjects_is_a_clear_error(workdir, capsys):
    tmp_path, configure = workdir
    make_folder(tmp_path / "tiny", n_subjects=1)
    configure(tmp_path / "tiny")
    with pytest.raises(SystemExit):
        run_stage("prepare", prepare.run)
    assert "too few subjects (2)" in capsys.readouterr().err
    assert not (tmp_path / "data" / "prepared").exists()


def test_train_fraction_drops_training_subjects_only(workdir):
    """The scarce cohort leaves prepare as the only training data; val and test are the same
    subjects and slices as with the whole cohort."""
    from brainsynth.data import prepared

    tmp_path, configure = workdir
    make_folder(tmp_path / "cohort", n_subjects=12)
    configure(tmp_path / "cohort", subject_pattern=r"(OAS\d_\w+?)_MR")
    run_stage("prepare", prepare.run)
    full = prepared.load(tmp_path / "data" / "prepared")
    configure(tmp_path / "cohort", subject_pattern=r"(OAS\d_\w+?)_MR", train_fraction=0.25)
    run_stage("prepare", prepare.run)
    scarce = prepared.load(tmp_path / "data" / "prepared")
    for split in ("val", "test"):
        assert sorted(full.subjects[full.splits == split]) == sorted(scarce.subjects[scarce.splits == split])
    for k in range(2):
        before = set(full.subjects[(full.splits == "train") & (full.labels == k)])
        after = set(scarce.subjects[(scarce.splits == "train") & (scarce.labels == k)])
        assert after < before and len(after) == round(0.25 * len(before))
    assert set(np.unique(scarce.splits)) == {"train", "val", "test"}  # the dropped slices are gone, not relabelled
    metrics = json.loads((tmp_path / "metrics" / "prepare.json").read_text())["data"]
    assert metrics["n_subjects"] == len(set(scarce.subjects))  # the dropped training subjects are not counted


def test_a_class_too_small_to_split_is_named_in_a_warning(workdir, capsys):
    tmp_path, configure = workdir
    make_folder(tmp_path / "cohort", n_subjects=4)
    for path in (tmp_path / "cohort" / "AD").glob("OAS1_11000*"):  # AD keeps 3 subjects …
        path.unlink()
    for path in (tmp_path / "cohort" / "AD").glob("OAS1_11001*"):  # … then 2
        path.unlink()
    configure(tmp_path / "cohort")
    capsys.readouterr()
    run_stage("prepare", prepare.run)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "needs at least 3 subjects" in line]
    assert len(warnings) == 1 and "class 'AD' has 2 subject(s)" in warnings[0]
