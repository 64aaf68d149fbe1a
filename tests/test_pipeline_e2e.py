"""End to end: real `dvc repro` in a temporary copy of the repo, then check the MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import TINY_PIPELINE, changed_params, copy_repo, pipeline_env, run_in

from brainsynth.config import with_overrides

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = TINY_PIPELINE
PARAMS_READ = "params_read"  # where each stage writes the params it read (BRAINSYNTH_RECORD_PARAMS)


def _env() -> dict:
    # system metrics every second (MLflow's default, 10 s, is longer than these tiny trainings)
    return pipeline_env({"BRAINSYNTH_RECORD_PARAMS": PARAMS_READ, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run_in(cmd, cwd, _env(), check)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    copy_repo(work, TINY)
    repro = _run(["dvc", "repro"], work)
    return work, repro


def _runs(work: Path):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None, "the experiment named in params.yaml was not created"
    return client, client.search_runs([experiment.experiment_id], max_results=200)


def test_four_finished_stage_runs_with_lineage(pipeline):
    work, _ = pipeline
    client, runs = _runs(work)
    stages = {}
    for run in runs:
        stage = run.data.tags.get("stage")
        if stage in ("prepare", "tune", "train", "evaluate"):
            assert stage not in stages, f"two {stage} runs"
            stages[stage] = run
    assert set(stages) == {"prepare", "tune", "train", "evaluate"}
    for stage, run in stages.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.metrics, f"{stage} logged no metrics"
        assert run.data.tags.get("git_commit"), stage
        assert "seed" in run.data.params and "train.epochs" in run.data.params
    assert stages["tune"].data.tags["upstream_run_id"] == stages["prepare"].info.run_id
    assert stages["train"].data.tags["upstream_run_id"] == stages["tune"].info.run_id
    assert stages["evaluate"].data.tags["upstream_run_id"] == stages["train"].info.run_id

    trials = [r for r in runs if r.data.tags.get("stage") == "tune-trial"]
    assert len(trials) == 2
    assert all(r.data.tags.get("mlflow.parentRunId") == stages["tune"].info.run_id for r in trials)

    for stage, expected in {"prepare": "figures/preview.png", "train": "figures/samples.png", "evaluate": "figures/samples_per_class.png"}.items():
        folder, name = expected.split("/")
        names = [Path(a.path).name for a in client.list_artifacts(stages[stage].info.run_id, folder)]
        assert name in names, f"{stage} artifacts: {names}"
    # one model leaves train (train.keep), stored once: inside the logged pyfunc, which evaluate, generate and the registry use
    assert not client.list_artifacts(stages["train"].info.run_id, "model")
    assert len(list((work / "mlruns").rglob("model.pt"))) == 1
    assert stages["train"].data.tags["model_uri"].startswith("models:/m-")
    curves = [Path(a.path).name for a in client.list_artifacts(stages["train"].info.run_id, "curves")]
    assert sorted(curves) == ["history.csv", "step_history.csv", "val_history.csv"]
    # one step axis in the train run: every metric is per epoch (the step windows are in step_history.csv)
    assert not [k for k in stages["train"].data.metrics if k.startswith("step_")]
    assert max(m.step for m in client.get_metric_history(stages["train"].info.run_id, "train_rec")) == 2
    # artifacts live under the repo's mlruns/, next to mlflow.db, where a bare `mlflow ui` finds them
    assert list((work / "mlruns").rglob("samples_per_class.png"))
    assert stages["train"].data.metrics["epochs"] == 2
    versions = client.search_model_versions("name='brainsynth'")
    assert len(versions) == 1 and versions[0].run_id == stages["train"].info.run_id  # registered by train
    for name in ("memorization.png", "interpolation.png", "utility.png", "morphometry.png", "nearest_real.png"):
        assert name in [Path(a.path).name for a in client.list_artifacts(stages["evaluate"].info.run_id, "figures")]



def test_a_dvc_remote_carries_the_results_to_another_clone_that_reproduces_without_retraining(pipeline, tmp_path):
    """the lab's data path: one clone pushes to a DVC remote (a local folder here, S3/SSH/NFS in a
    lab), another clone pulls and is up to date: `dvc repro` there runs no stage."""
    work, _ = pipeline
    remote = tmp_path / "dvc-remote"
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], work)
    try:
        _run(["git", "add", "-A"], work)
        _run(["git", "commit", "-qm", "results and the remote"], work)
        _run(["dvc", "push"], work)
        other = tmp_path / "other"
        _run(["git", "clone", "-q", str(work), str(other)], tmp_path)
        _run(["dvc", "pull"], other)
        assert (other / "models" / "train" / "model.pt").read_bytes() == (work / "models" / "train" / "model.pt").read_bytes()
        repro = _run(["dvc", "repro"], other)
        assert "Running stage" not in repro.stdout, repro.stdout[-2000:]
        assert not (other / "mlflow.db").exists()  # nothing was trained or logged again
    finally:
        _run(["dvc", "remote", "remove", "shared"], work)


def test_runs_describe_themselves_and_group_by_pipeline(pipeline):
    """each run's description says what it is and links its upstream run; evaluate's carries
    the results headline; one pipeline execution shares one pipeline_run tag; the registered
    version describes itself, is the candidate, and (the first one) the champion."""
    from mlflow.tracking import MlflowClient

    work, _ = pipeline
    _, runs = _runs(work)
    stages = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("stage") in ("prepare", "tune", "train", "evaluate")}
    assert len({r.data.tags["pipeline_run"] for r in stages.values()}) == 1
    assert stages["prepare"].data.tags["pipeline_run"] == stages["prepare"].info.run_id
    evaluate = stages["evaluate"].data.tags["mlflow.note.content"]
    assert "swd" in evaluate and "real-vs-real" in evaluate and "balanced accuracy" in evaluate
    assert f"/runs/{stages['train'].info.run_id}?workflowType=machine_learning)" in evaluate  # a link to the train run
    assert f"/runs/{stages['tune'].info.run_id}?workflowType=machine_learning)" in stages["train"].data.tags["mlflow.note.content"]
    assert all(r.data.tags.get("process") for r in stages.values())
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]["prepare"]["outs"]
    data_hash = next(o["md5"] for o in lock if o["path"] == "data/prepared")
    for stage, context in (("train", "training"), ("evaluate", "evaluation")):
        (used,) = stages[stage].inputs.dataset_inputs
        assert used.dataset.name == "data/prepared" and used.dataset.digest == data_hash[:36], stage
        assert used.tags[0].value == context
    assert any(k.startswith("system/") for k in stages["train"].data.metrics)  # psutil's CPU/memory samples
    assert "train_rec" in stages["train"].data.metrics and "train_cls_g" not in stages["train"].data.metrics  # disabled terms
    assert len(client_images := MlflowClient().list_artifacts(stages["train"].info.run_id, "images")) >= 2, client_images  # per-epoch grids
    client = MlflowClient()
    version = client.get_model_version_by_alias("brainsynth", "candidate")
    assert client.get_model_version_by_alias("brainsynth", "champion").version == version.version  # the first: no champion before
    assert version.run_id == stages["train"].info.run_id and stages["train"].info.run_id in version.description
    assert version.tags["data_hash"] == data_hash and "eval.swd" in version.tags
    assert "new champion" in stages["evaluate"].data.tags["registry"]


def test_the_run_s_model_exports_from_another_folder_with_real_voxel_spacing(pipeline, tmp_path):
    """`brainsynth-generate --model runs:/<train run>/generator` outside the repo (the store named
    by MLFLOW_TRACKING_URI); the NIfTI stacks carry the cohort's pixel size in mm, the manifest
    lists them with the model's sha256."""
    import hashlib

    import nibabel as nib

    work, _ = pipeline
    _, runs = _runs(work)
    train = next(r for r in runs if r.data.tags.get("stage") == "train")
    env = {**_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    run_in([str(BIN / "brainsynth-generate"), "--model", f"runs:/{train.info.run_id}/generator", "--out", "synth", "--n-per-class", "2",
            "--nifti"], tmp_path, env)
    manifest = json.loads((tmp_path / "synth" / "manifest.json").read_text())
    size = json.loads((work / "data" / "prepared" / "meta.json").read_text())["image_size"]
    assert manifest["pixel_mm"] == round(200.0 / size, 4)
    assert manifest["model_sha256"] == hashlib.sha256((work / "models" / "train" / "model.pt").read_bytes()).hexdigest()
    volumes = [f["path"] for f in manifest["files"] if f["kind"] == "nifti"]
    assert len(volumes) == 3
    zooms = nib.load(tmp_path / "synth" / volumes[0]).header.get_zooms()
    assert np.allclose(zooms, manifest["pixel_mm"])


def test_dvc_plots_render_training_curves(pipeline):
    work, _ = pipeline
    shown = json.loads(_run(["dvc", "plots", "show", "--json"], work).stdout)
    assert any("history.csv" in key for key in shown["data"]), list(shown["data"])


def test_metrics_files_and_keys(pipeline):
    work, _ = pipeline
    for stage in ("prepare", "tune", "train", "evaluate"):
        assert (work / "metrics" / f"{stage}.json").is_file()
    grouped = json.loads((work / "metrics" / "evaluate.json").read_text())
    assert list(grouped)[:4] == ["realism", "anatomy", "coverage", "utility"]  # quality first in dvc exp show
    assert "seconds" not in json.dumps(grouped) and "n_images" not in json.dumps(grouped)
    evaluation = {k: v for group in grouped.values() for k, v in group.items()}
    for key in ("recon_psnr", "recon_ssim", "ms_ssim_samples", "ms_ssim_real", "swd", "nn_ratio", "memorization_rate",
                "trtr_balanced_accuracy_mean", "trtr_balanced_accuracy_std", "tstr_macro_f1_mean", "mix100_balanced_accuracy_mean",
                "pretrain_balanced_accuracy_mean", "gain_mix25_mean", "gain_mix100_mean", "gain_pretrain_mean",
                "augment_gain_mean", "augment_gain_std", "augment_gain_vs_duplicate_mean", "judge_trtr_balanced_accuracy_mean",
                "judge_tstr_balanced_accuracy_mean", "judge_tstr_ratio", "judge_gan_test_balanced_accuracy", "feature_fd_std", "tstr_ratio", "gan_test_balanced_accuracy", "recon_class_balanced_accuracy",
                "real_class_balanced_accuracy", "feature_fd", "feature_precision", "feature_recall", "feature_fd_real",
                "morph_distance_ratio"):
        assert isinstance(evaluation[key], float), key
    # The tiny cohort has one training subject of a class: no held-out folds for the filtered export, which is
    # left out with a warning (tests/test_filter.py scores it); evaluate finishes.
    assert "filtered export not scored" in (work / "logs" / "evaluate.log").read_text()
    assert not [key for key in evaluation if "filter" in key]
    assert (work / "reports" / "evaluate" / "utility.csv").read_text().splitlines()[0] == "kind,balanced_accuracy,std"
    assert json.loads((work / "metrics" / "generate.json").read_text()) == {"generate": {"n_images": 0}}  # export off by default
    prepare = json.loads((work / "metrics" / "prepare.json").read_text())["data"]
    assert prepare["n_images"] == 48 and prepare["n_subjects"] == 12 and not [k for k in prepare if "/" in k]
    train = json.loads((work / "metrics" / "train.json").read_text())
    assert set(train) == {"validation", "model"} and "val_swd" in train["validation"]  # no always-zero losses, no timings
    assert set(json.loads((work / "metrics" / "tune.json").read_text())["tune"]) == {"chosen_value", "n_complete", "n_pruned", "n_failed"}
    from brainsynth.checkpoint import load_model_file

    # the embedded cohort's field of view over its pixels travels from prepare into the model file (NIfTI export)
    size = json.loads((work / "data" / "prepared" / "meta.json").read_text())["image_size"]
    assert load_model_file(work / "models" / "train" / "model.pt").pixel_mm == round(200.0 / size, 4)


def test_second_repro_is_a_noop_and_params_touch_only_their_stage(pipeline):
    work, _ = pipeline
    again = _run(["dvc", "repro"], work)
    assert "Running stage" not in again.stdout
    # identical results hit DVC's cache: prepare rerun on the same input writes byte-identical
    # outputs (no run ids, no timestamps), so nothing downstream is stale
    _run(["dvc", "repro", "-f", "-s", "prepare"], work)
    assert json.loads(_run(["dvc", "status", "--json"], work).stdout) == {}
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["n_pairs"] = 10
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run(["dvc", "status", "--json"], work).stdout)
    assert set(status) == {"evaluate"}
    params["evaluate"]["n_pairs"] = 8
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_an_evaluate_knob_that_does_not_touch_utility_reuses_its_classifiers(pipeline):
    """evaluate.n_pairs reruns evaluate, but the downstream classifiers (most of its time) come
    from the cache keyed by model, data and utility settings, with the same results."""
    work, _ = pipeline
    before = json.loads((work / "metrics" / "evaluate.json").read_text())["utility"]
    try:
        with changed_params(work, lambda p: p["evaluate"].update(n_pairs=6)):
            _run(["dvc", "repro", "evaluate"], work)
            assert "reusing the classifiers" in (work / "logs" / "evaluate.log").read_text()
            after = json.loads((work / "metrics" / "evaluate.json").read_text())["utility"]
            assert after == before
    finally:
        _run(["dvc", "repro", "evaluate"], work)  # back to the committed params' outputs (from DVC's run cache)


def test_failed_stage_is_one_line_failed_run_and_keeps_outputs(pipeline):
    work, _ = pipeline
    before = (work / "metrics" / "evaluate.json").read_text()
    model = work / "models" / "train" / "model.pt"
    saved = model.read_bytes()
    model.write_bytes(b"not a checkpoint")
    try:
        result = _run([str(BIN / "python"), "stages/evaluate.py"], work, check=False)
    finally:
        model.write_bytes(saved)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "model.pt" in error_lines[0]
    assert (work / "metrics" / "evaluate.json").read_text() == before
    _, runs = _runs(work)
    failed = [r for r in runs if r.data.tags.get("stage") == "evaluate" and r.info.status == "FAILED"]
    assert failed and "model.pt" in failed[0].data.tags["error"]


def test_invalid_params_fail_fast_with_the_key(pipeline):
    work, _ = pipeline
    params_text = (work / "params.yaml").read_text()
    try:
        (work / "params.yaml").write_text(params_text.replace("\n  epochs: 2", "\n  epochs: two", 1))  # train.epochs
        result = _run([str(BIN / "python"), "stages/train.py"], work, check=False)
    finally:
        (work / "params.yaml").write_text(params_text)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "train.epochs" in result.stderr and "'two'" in result.stderr


def _kill_training_in_second_epoch(monkeypatch):
    """Make the next training raise KeyboardInterrupt (what Ctrl-C and SIGTERM become) in its second
    epoch; returns the original ``Trainer.train_epoch`` to restore."""
    from brainsynth.training.engine import Trainer

    original = Trainer.train_epoch
    finished = []

    def killed_in_second_epoch(self, *args, **kwargs):
        if finished:
            raise KeyboardInterrupt
        finished.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_second_epoch)
    return original


def test_killed_training_resumes_in_the_same_mlflow_run(pipeline, monkeypatch):
    work, _ = pipeline
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    from brainsynth.pipeline import train
    from brainsynth.pipeline.stage import run_stage
    from brainsynth.training.engine import Trainer

    original = _kill_training_in_second_epoch(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        run_stage("train", train.run)
    assert exit_info.value.code == 130
    assert (work / "checkpoints" / "train" / "last.pt").is_file()

    monkeypatch.setattr(Trainer, "train_epoch", original)
    run_stage("train", train.run)
    assert not (work / "checkpoints" / "train" / "last.pt").exists()

    client, runs = _runs(work)
    resumed = [r for r in runs if r.data.tags.get("stage") == "train" and r.data.tags.get("resumed") == "true"]
    assert len(resumed) == 1 and resumed[0].info.status == "FINISHED"
    assert "error" not in resumed[0].data.tags  # the interruption it recorded is over
    steps = [m.step for m in client.get_metric_history(resumed[0].info.run_id, "train_rec")]
    assert sorted(steps) == [1, 2]  # epoch 1 from the killed process, epoch 2 after resuming
    import csv

    with open(work / "models" / "train" / "step_history.csv") as handle:
        windows = list(csv.DictReader(handle))
    assert {float(row["epoch"]) for row in windows} >= {1.0, 2.0}  # the step windows of the killed epoch survive the resume
    assert [int(row["step"]) for row in windows] == sorted({int(row["step"]) for row in windows})


def test_a_killed_run_whose_checkpoint_is_discarded_is_closed_as_killed(pipeline, monkeypatch):
    """SIGKILL leaves the MLflow run RUNNING; when the next training discards that
    checkpoint (the config changed), the orphan is marked KILLED rather than RUNNING forever."""
    work, _ = pipeline
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    from brainsynth.config import load
    from brainsynth.pipeline import train
    from brainsynth.pipeline.stage import run_stage
    from brainsynth.training.engine import Trainer

    original = _kill_training_in_second_epoch(monkeypatch)
    with pytest.raises(SystemExit):
        run_stage("train", train.run)
    client, runs = _runs(work)
    orphan = max((r for r in runs if r.data.tags.get("stage") == "train"), key=lambda r: r.info.start_time)
    client.update_run(orphan.info.run_id, status="RUNNING")  # what a SIGKILL leaves behind

    monkeypatch.setattr(Trainer, "train_epoch", original)
    cfg = with_overrides(load(work / "params.yaml"), {"train.n_sample_images": 4})  # another config: the checkpoint is discarded
    run_stage("train", train.run, cfg)
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    run_stage("train", train.run)  # back to the committed params (later tests use its outputs)


def test_train_refuses_tuned_values_found_for_other_params(pipeline, monkeypatch, capsys):
    """a direct `python stages/train.py` after params.yaml changed must not lay stale
    tuned values over it."""
    work, _ = pipeline
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    from brainsynth.config import load
    from brainsynth.pipeline import train
    from brainsynth.pipeline.stage import run_stage

    best = work / "models" / "tune" / "best_params.yaml"
    original = best.read_text()
    try:
        best.write_text("optim: {lr: 0.0004}\n")  # a tuned value, found for the committed params
        train.check_tuned_for(load(work / "params.yaml"))  # same params: accepted
        changed = with_overrides(load(work / "params.yaml"), {"loss.drift_weight": 0.002})
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_stage("train", train.run, changed)
        assert exit_info.value.code == 1
        error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "tuned for other params" in error[0] and "loss.drift_weight: 0.001 → 0.002" in error[0]
    finally:
        best.write_text(original)


def test_changed_raw_folder_reruns_prepare(tmp_path):
    """data.source is a DVC dependency: adding files to the user's folder makes prepare stale."""
    from PIL import Image

    work = tmp_path / "repo"
    raw = tmp_path / "Data"
    for cls in ("CN", "AD"):
        for s in range(3):
            (raw / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 20), 50 + s, np.uint8)).save(raw / cls / f"OAS1_{int(cls == 'AD')}{s:03d}_MR1_1.png")
    copy_repo(work, {"mlflow": {"experiment": "raw"}, "data": {"source": str(raw), "image_size": 16, "workers": 1}})
    _run(["dvc", "repro", "prepare"], work)
    assert "prepare" not in json.loads(_run(["dvc", "status", "--json", "prepare"], work).stdout)
    Image.fromarray(np.full((20, 20), 99, np.uint8)).save(raw / "AD" / "OAS1_1009_MR1_1.png")
    assert "prepare" in json.loads(_run(["dvc", "status", "--json", "prepare"], work).stdout)
    _run(["dvc", "repro", "prepare"], work)
    assert json.loads((work / "metrics" / "prepare.json").read_text())["data"]["n_images"] == 7


def test_each_stage_reads_only_the_params_dvc_yaml_declares(pipeline):
    """DVC reruns a stage when a declared param changes: a param the code reads but dvc.yaml does
    not declare would leave stale results. mlflow.* only says where runs are logged."""
    work, _ = pipeline
    declared = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    for stage in ("prepare", "tune", "train", "evaluate", "generate"):
        reads = set((work / PARAMS_READ / f"{stage}.txt").read_text().split())
        keys = [k for item in declared[stage]["params"] for k in ([item] if isinstance(item, str) else [])]
        undeclared = {r for r in reads if not r.startswith("mlflow.") and not any(r == k or r.startswith(k + ".") for k in keys)}
        assert reads and not undeclared, f"{stage} reads params dvc.yaml does not declare: {sorted(undeclared)}"


def test_tuned_values_are_a_params_file_dvc_tracks(pipeline):
    work, _ = pipeline
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]["train"]["params"]
    assert "models/tune/best_params.yaml" in lock
    tuned = yaml.safe_load((work / "models" / "tune" / "best_params.yaml").read_text())
    assert lock["models/tune/best_params.yaml"] == (tuned or {})


@pytest.mark.parametrize("keep", ["best", "last"])
def test_the_kept_model_is_the_one_model_file(pipeline, monkeypatch, keep):
    """Regression: best.pt was chosen on validation but evaluate, generate and the registry used the
    last epoch. Now train.keep picks one model and model.pt is it."""
    work, _ = pipeline
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    import torch

    from brainsynth.checkpoint import load_model_file
    from brainsynth.config import load
    from brainsynth.pipeline import train
    from brainsynth.pipeline.stage import run_stage

    objectives = iter([3.0, 5.0])  # epoch 1 is the best of the two validated epochs
    decoders = {}

    def scripted_validation(trainer, images, labels, cfg, judge=None):
        decoders[trainer.epoch] = {k: v.clone() for k, v in trainer.model.ema_decoder.state_dict().items()}
        return {"val_swd": 1.0, "val_recon_mae": 1.0, "val_objective": next(objectives)}

    monkeypatch.setattr(train, "validation_metrics", scripted_validation)
    cfg = with_overrides(load(work / "params.yaml"), {"train.keep": keep, "train.sample_every": 1})
    run_stage("train", train.run, cfg)
    kept = 1 if keep == "best" else 2
    stored = load_model_file(work / "models" / "train" / "model.pt")
    assert all(torch.equal(stored.decoder[k], decoders[kept][k]) for k in decoders[kept])
    assert json.loads((work / "metrics" / "train.json").read_text())["model"]["kept_epoch"] == kept
    assert not list((work / "models" / "train").glob("best*"))


def _train_runs(work: Path) -> list:
    _, runs = _runs(work)
    return [r for r in runs if r.data.tags.get("stage") == "train"]


def test_two_process_training_writes_one_run_and_resumes_after_a_kill(pipeline):
    """train.nproc_per_node = 2 under `dvc repro` (gloo on CPU): one MLflow run with per-epoch
    metrics and a loadable model; SIGKILL of the whole job mid-training, then every rank resumes
    from the same checkpoint in the same MLflow run."""
    import signal
    import time

    import psutil

    from brainsynth.checkpoint import load_model_file

    work, _ = pipeline
    with changed_params(work, lambda p: p["train"].update(nproc_per_node=2)) as params:
        before = {r.info.run_id for r in _train_runs(work)}
        repro = _run(["dvc", "repro", "train"], work)
        assert "Running stage 'train'" in repro.stdout
        new = [r for r in _train_runs(work) if r.info.run_id not in before]
        assert len(new) == 1 and new[0].info.status == "FINISHED"  # rank 0 alone logs
        client, _ = _runs(work)
        assert sorted(m.step for m in client.get_metric_history(new[0].info.run_id, "train_rec")) == [1, 2]
        assert load_model_file(work / "models" / "train" / "model.pt").decoder
        assert "2 processes × 2" in (work / "logs" / "train.log").read_text()
        assert (work / "logs" / "train.rank1.log").is_file()

        # kill and resume: 4 epochs; SIGKILL the launcher and both ranks once the first checkpoint exists
        params["train"]["epochs"] = 4
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        checkpoint = work / "checkpoints" / "train" / "last.pt"
        before = {r.info.run_id for r in _train_runs(work)}
        job = subprocess.Popen([str(BIN / "python"), "stages/train.py"], cwd=work, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # torchrun starts its workers in sessions of their own: kill the launcher and every descendant
        # (a lost node or the OOM killer, not a Ctrl-C, which torchrun forwards)
        launcher = psutil.Process(job.pid)
        for process in [launcher, *launcher.children(recursive=True)]:
            process.send_signal(signal.SIGKILL)
        job.wait()
        assert checkpoint.is_file(), "the job ended before its first checkpoint"
        _run([str(BIN / "python"), "stages/train.py"], work)
        new = [r for r in _train_runs(work) if r.info.run_id not in before]
        assert len(new) == 1 and new[0].info.status == "FINISHED" and new[0].data.tags.get("resumed") == "true"
        steps = [m.step for m in client.get_metric_history(new[0].info.run_id, "train_rec")]
        assert sorted(set(steps)) == [1, 2, 3, 4]
        for log_name in ("train.log", "train.rank1.log"):
            assert "resuming from" in (work / "logs" / log_name).read_text(), log_name
        assert not checkpoint.exists()


def test_a_run_stopped_after_its_last_epoch_only_saves_and_registers_on_resume(pipeline, monkeypatch):
    """a resume checkpoint at the final epoch used to start training over from scratch."""
    work, _ = pipeline
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(work))
    from brainsynth.pipeline import train
    from brainsynth.pipeline.stage import run_stage
    from brainsynth.training.engine import Trainer

    original_register = train.register

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "register", stopped)
    with pytest.raises(SystemExit):
        run_stage("train", train.run)
    assert (work / "checkpoints" / "train" / "last.pt").is_file()
    monkeypatch.setattr(train, "register", original_register)
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    run_stage("train", train.run)
    assert not (work / "checkpoints" / "train" / "last.pt").exists() and (work / "models" / "train" / "model.pt").is_file()
    _, runs = _runs(work)
    latest = max((r for r in runs if r.data.tags.get("stage") == "train"), key=lambda r: r.info.start_time)
    assert latest.data.tags.get("resumed") == "true" and latest.info.status == "FINISHED"
