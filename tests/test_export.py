"""Export and reuse: the generate command (PNG + NIfTI + manifest) and the registered MLflow pyfunc."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from helpers import repo_config
from PIL import Image

from brainsynth.checkpoint import save_model_file
from brainsynth.export import main as generate_main
from brainsynth.files import digest
from brainsynth.inference import SynthModel
from brainsynth.model.vaegan import Decoder, Encoder

DATA = Path(__file__).resolve().parent / "data"

CLASSES = ["healthy", "mild", "moderate"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = repo_config({"data.image_size": 16, "model.latent_dim": 4, "model.base_channels": 4, "model.max_channels": 8,
                       "model.cbam_res": [8], "model.self_attention_res": []})
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, cfg.model, 16, 3, CLASSES, Encoder(cfg.model, 16, 3), Decoder(cfg.model, 16, 3), pixel_mm=12.5)
    return path


def test_generate_writes_pngs_nifti_and_manifest(model_file, tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert generate_main(["--model", str(model_file), "--out", str(out), "--n-per-class", "3", "--seed", "7", "--nifti"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_digest"] == digest(model_file) and manifest["classes"] == CLASSES
    assert manifest["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert abs(datetime.fromisoformat(manifest["created"]) - datetime.now(timezone.utc)) < timedelta(minutes=5)
    pngs = [f for f in manifest["files"] if f["kind"] == "png"]
    volumes = {f["path"]: f for f in manifest["files"] if f["kind"] == "nifti"}
    assert len(pngs) == 9 and set(volumes) == {"healthy.nii.gz", "mild.nii.gz", "moderate.nii.gz"}
    assert "wrote 9 images" in capsys.readouterr().out
    first = pngs[0]
    assert first["class"] == "healthy" and (out / first["path"]).is_file()
    image = np.asarray(Image.open(out / first["path"]))
    assert image.shape == (16, 16) and image.dtype == np.uint8
    model = SynthModel.load(model_file)
    assert np.array_equal(image, model.sample(np.zeros(3, int), first["seed"])[0])  # the manifest's seed reproduces it
    import nibabel as nib

    stack = nib.load(out / "mild.nii.gz")
    assert stack.shape == (16, 16, 3) and volumes["mild.nii.gz"]["n_slices"] == 3
    # the training data's pixel size (200 mm over 16 px here), in mm, centred; a description a viewer shows
    assert stack.header.get_zooms() == (12.5, 12.5, 12.5) and stack.header.get_xyzt_units()[0] == "mm"
    assert np.allclose(stack.affine[:3, 3], [-7.5 * 12.5, -7.5 * 12.5, -1 * 12.5])
    assert b"mild" in stack.header["descrip"].item() and b"unknown" not in stack.header["descrip"].item()
    assert manifest["pixel_mm"] == 12.5
    # a re-run replaces the folder whole: no stale files from a larger export
    assert generate_main(["--model", str(model_file), "--out", str(out), "--n-per-class", "1"]) == 0
    assert len(list(out.rglob("*.png"))) == 3 and not list(out.glob("*.nii.gz"))


def test_generate_errors_are_one_line(tmp_path, capsys):
    assert generate_main(["--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.pt" in err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert generate_main(["--model", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


def test_registered_pyfunc_generates_per_class(model_file, tmp_path, monkeypatch):
    import mlflow

    from brainsynth.serving import log_generator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("export")
    with mlflow.start_run():
        log_generator(model_file, "brainsynth-test")
    loaded = mlflow.pyfunc.load_model("models:/brainsynth-test/1")
    images = loaded.predict({"n": 4, "class": "moderate", "seed": 3})
    assert images.shape == (4, 16, 16) and images.dtype == np.uint8
    assert np.array_equal(images, SynthModel.load(model_file).sample(np.full(4, 2), 3))
    with pytest.raises(Exception, match="not one of"):
        loaded.predict({"n": 1, "class": "severe", "seed": 0})
    assert loaded.predict({"n": 0, "class": 1}).shape == (0, 16, 16)  # an empty batch, not an error
    with pytest.raises(Exception, match="'n' = -1 is outside"):
        loaded.predict({"n": -1})
    assert "'class': name or index" in loaded.metadata.metadata["request"]  # the request, documented with the model
    with pytest.raises(Exception, match=r"unknown request keys \['clas'\]"):  # was silently class 0
        loaded.predict({"n": 1, "clas": 2})
    # the generate command takes the registry URI too
    assert generate_main(["--model", "models:/brainsynth-test/1", "--out", str(tmp_path / "from_registry"), "--n-per-class", "2"]) == 0
    assert len(list((tmp_path / "from_registry").rglob("*.png"))) == 6


def test_model_file_holds_only_what_sampling_needs(model_file):
    import torch

    payload = torch.load(model_file, weights_only=True)
    assert set(payload) == {"format", "model", "image_size", "pixel_mm", "n_classes", "class_names", "encoder", "decoder"}
    assert payload["format"] == "brainsynth-model-v2" and "train" not in payload["model"]


def test_model_file_of_the_previous_format_still_loads():
    """tests/data/model_v1.pt was written by the v1 code (whole pipeline config embedded); its
    samples were saved at the same time."""
    model = SynthModel.load(DATA / "model_v1.pt")
    assert model.class_names == ["CN", "AD"] and model.image_size == 16
    assert np.array_equal(model.sample(np.array([0, 1, 1]), seed=3), np.load(DATA / "model_v1_samples.npy"))


def test_export_never_replaces_a_users_folder_by_accident(model_file, tmp_path, monkeypatch, capsys):
    """--out pointing at a folder with the user's files used to delete them, and
    --out . left a staging folder of PNGs behind."""
    precious = tmp_path / "mydata"
    precious.mkdir()
    (precious / "scan.nii.gz").write_bytes(b"irreplaceable")
    assert generate_main(["--model", str(model_file), "--out", str(precious), "--n-per-class", "1"]) == 1
    assert "not an earlier export" in capsys.readouterr().err and (precious / "scan.nii.gz").read_bytes() == b"irreplaceable"
    monkeypatch.chdir(precious)
    assert generate_main(["--model", str(model_file), "--out", ".", "--n-per-class", "1", "--force"]) == 1
    assert "current folder" in capsys.readouterr().err
    assert sorted(p.name for p in precious.iterdir()) == ["scan.nii.gz"]  # no staging folder left behind
    # an earlier export is replaced; --force replaces anything else (but never the current folder)
    monkeypatch.chdir(tmp_path)
    export_dir = tmp_path / "export"
    assert generate_main(["--model", str(model_file), "--out", str(export_dir), "--n-per-class", "1"]) == 0
    assert generate_main(["--model", str(model_file), "--out", str(export_dir), "--n-per-class", "2"]) == 0
    (export_dir / "my_labels.csv").write_text("added by the user")  # a file the manifest does not list
    assert generate_main(["--model", str(model_file), "--out", str(export_dir), "--n-per-class", "2"]) == 1
    assert "also holds 'my_labels.csv' (not in its manifest)" in capsys.readouterr().err and (export_dir / "my_labels.csv").is_file()
    assert generate_main(["--model", str(model_file), "--out", str(precious), "--n-per-class", "1", "--force"]) == 0
    assert not (precious / "scan.nii.gz").exists()
    # a project folder is never replaced, --force or not
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "train.py").write_text("work")
    assert generate_main(["--model", str(model_file), "--out", str(project), "--n-per-class", "1", "--force"]) == 1
    assert "holds .git: a project folder is never replaced" in capsys.readouterr().err and (project / "train.py").is_file()


def test_a_registry_uri_outside_the_repo_creates_nothing_and_names_the_store(tmp_path, monkeypatch, capsys):
    from brainsynth import export

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert export.main(["--model", "models:/brainsynth/1", "--out", str(tmp_path / "synth")]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"no MLflow store at sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in error[0]
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no output folder


def test_regrade_export_rerenders_each_source_slice_and_names_it(model_file, tmp_path, capsys):
    """--from/--to-class: every slice of the split, decoded at the requested grade from its own
    posterior mean, each manifest entry naming its source slice; bad class/split are one-line errors."""
    from brainsynth.data import prepared

    rng = np.random.default_rng(0)
    images = (rng.random((10, 16, 16)) * 255).astype(np.uint8)
    labels, splits = np.arange(10) % 3, np.array(["train"] * 6 + ["test"] * 4)
    prepared.save(tmp_path / "prepared", images, labels, np.array([f"s{i // 2}" for i in range(10)]), splits, {"class_names": CLASSES})
    out = tmp_path / "moderate"
    assert generate_main(["--model", str(model_file), "--from", str(tmp_path / "prepared"), "--split", "test", "--to-class", "moderate",
                          "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "regrade" and manifest["split"] == "test" and len(manifest["files"]) == 4
    entry = manifest["files"][1]
    assert entry["source_index"] == 7 and entry["source_subject"] == "s3" and entry["source_class"] == CLASSES[labels[7]]
    model = SynthModel.load(model_file)
    expected = model.regrade(images[7:8], labels[7:8], np.array([2]))[0]
    assert np.array_equal(np.asarray(Image.open(out / entry["path"])), expected)
    capsys.readouterr()
    assert generate_main(["--model", str(model_file), "--from", str(tmp_path / "prepared"), "--to-class", "severe", "--out", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == "error: --to-class 'severe': the model knows healthy, mild, moderate"
    assert generate_main(["--model", str(model_file), "--from", str(tmp_path / "prepared"), "--split", "val", "--to-class", "mild",
                          "--out", str(tmp_path / "y")]) == 1
    assert "--split 'val': no slices" in capsys.readouterr().err
