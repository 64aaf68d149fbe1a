"""The filtered export: K× draws per class, the held-out ensemble keeps those it reads as their
class most confidently — checked on toy generators whose answers are known: one that draws the wrong
class half the time (the filter must find the right half), a class-swapping one (the filter cannot
put back a class the generator never draws) and a faithful one (the filter must not hurt)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import repo_config

from brainsynth.classifiers import filtering
from brainsynth.config import ConfigError, with_overrides
from brainsynth.evaluation.downstream import utility
from brainsynth.export import main as generate_main

CPU = torch.device("cpu")


def _blobs(labels, rng, size=16):
    """Class 1 is a bright disc, class 0 a dim one, with noise."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    level = np.where(np.asarray(labels) == 1, 200.0, 60.0)[:, None, None]
    return np.clip(disc * level + rng.normal(0, 15, (len(labels), size, size)), 0, 255).astype(np.uint8)


def faithful(labels, seed):
    return _blobs(labels, np.random.default_rng(seed))


def swapped(labels, seed):
    return _blobs(1 - np.asarray(labels), np.random.default_rng(seed))


def half_wrong(labels, seed):
    """Every other draw is of the other class: the grade is there in half the samples."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    drawn = np.where(rng.random(len(labels)) < 0.5, labels, 1 - labels)
    return _blobs(drawn, rng)


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i:02d}" for i in range(24)], 10)
    labels = np.repeat(np.arange(24) % 2, 10)
    return _blobs(labels, rng), labels, subjects


@pytest.fixture(scope="module")
def ensemble(cohort):
    images, labels, subjects = cohort
    return filtering.train_ensemble(images, labels, subjects, 2, members=3, epochs=4, seed=0, device=CPU, recipe=repo_config().evaluate.classifier)


def test_the_ensemble_is_held_out_by_subject_and_shares_no_seed_with_the_evaluation_classifiers(cohort, ensemble):
    images, labels, subjects = cohort
    assert len(ensemble.members) == 3 and sum(ensemble.n_subjects) == 24  # every subject held out exactly once
    assert min(ensemble.held_out) > 0.9  # each member reads the subjects it never saw
    evaluation_seeds = {0 + 100 * i for i in range(20)}  # pipeline.evaluate: seed + 100 × i, evaluate.utility_seeds ≤ 20
    assert not set(ensemble.seeds) & evaluation_seeds
    with pytest.raises(ValueError, match="filter.members = 13: the training split has 12 subjects of a class"):
        filtering.train_ensemble(images, labels, subjects, 2, members=13, epochs=1, seed=0, device=CPU, recipe=repo_config().evaluate.classifier)


def test_the_filter_keeps_the_draws_that_carry_their_class(ensemble):
    images, scores, drawn = filtering.draw_and_keep(half_wrong, ensemble, 1, n_drawn=40, n_kept=10, seed=3)
    assert images.shape == (10, 16, 16) and len(scores) == 10 and np.all(np.diff(drawn) > 0)
    everything = half_wrong(np.ones(40, int), 3)
    assert np.array_equal(images, everything[drawn])  # a subset of the same draw, in draw order
    bright = images[:, 8, 8].astype(float).mean()
    assert bright > 150  # all kept slices are the bright class 1 ...
    assert everything[:, 8, 8].astype(float).mean() < bright - 40  # ... though half the draws were dim
    assert scores.min() > 0.9 and np.all(scores >= np.sort(ensemble.scores(everything, np.ones(40, int)))[-10])


def test_utility_with_the_filter_on_toy_generators_with_known_answers(cohort, ensemble):
    """The filter lifts TSTR of a generator that draws the class half the time, cannot rescue one
    that swaps classes, and leaves a faithful one as good as it was; same slice counts throughout."""
    rng = np.random.default_rng(1)
    train_y, test_y = rng.integers(0, 2, 256), rng.integers(0, 2, 64)
    train_x, test_x = _blobs(train_y, rng), _blobs(test_y, rng)
    kwargs = dict(n_classes=2, epochs=10, device=CPU, recipe=repo_config().evaluate.classifier, pretrain=False, seeds=[0], ratios=[1.0])
    out = {}
    for name, generator in (("half_wrong", half_wrong), ("swapped", swapped), ("faithful", faithful)):
        filtered = filtering.filtered_sampler(generator, ensemble, oversample=4)
        assert filtered(train_y, 5).shape == train_x.shape
        out[name] = utility(train_x, train_y, generator, test_x, test_y, filtered=filtered, **kwargs).summary()
    half, swap, good = out["half_wrong"], out["swapped"], out["faithful"]
    assert half["tstr_filtered_balanced_accuracy_mean"] > half["tstr_balanced_accuracy_mean"] + 0.2
    assert half["tstr_filtered_balanced_accuracy_mean"] > 0.9 and half["tstr_ratio_filtered"] > 0.9
    assert half["augment_gain_filtered_mean"] >= half["augment_gain_mean"] - 0.02
    assert "mix100_filtered_balanced_accuracy_mean" in half  # the best use, again with filtered slices
    assert swap["tstr_filtered_balanced_accuracy_mean"] < 0.3  # every draw is of the wrong class: nothing to keep
    assert good["tstr_filtered_balanced_accuracy_mean"] > 0.9 and good["tstr_balanced_accuracy_mean"] > 0.9


CLASSES = ["healthy", "mild"]


@pytest.fixture(scope="module")
def export_inputs(tmp_path_factory):
    """A tiny untrained two-class model file, a prepared dataset of blobs and a params file with a small ensemble."""
    from helpers import write_params

    from brainsynth.checkpoint import save_model_file
    from brainsynth.data import prepared
    from brainsynth.model.vaegan import Decoder, Encoder

    root = tmp_path_factory.mktemp("filtered_export")
    cfg = repo_config({"data.image_size": 16, "model.latent_dim": 4, "model.base_channels": 4, "model.max_channels": 8,
                       "model.cbam_res": [8], "model.self_attention_res": []})
    save_model_file(root / "model.pt", cfg.model, 16, 2, CLASSES, Encoder(cfg.model, 16, 2), Decoder(cfg.model, 16, 2))
    labels = np.repeat(np.arange(12) % 2, 6)
    prepared.save(root / "prepared", _blobs(labels, np.random.default_rng(0)), labels, np.repeat([f"s{i}" for i in range(12)], 6),
                  np.array(["train"] * 72), {"class_names": CLASSES})
    write_params(root / "params.yaml", {"evaluate": {"filter": {"members": 2, "epochs": 2}, "classifier": {"min_steps": 20}}})
    return root


def test_filtered_export_writes_the_kept_slices_with_their_scores(export_inputs, tmp_path, capsys):
    """brainsynth-generate --oversample K --keep F: the manifest records the filter, the ensemble and
    each slice's score and place in the draw; the kept slices are the best-scored of the draw."""
    from PIL import Image

    from brainsynth.inference import SynthModel

    root, out = export_inputs, tmp_path / "filtered"
    args = ["--model", str(root / "model.pt"), "--out", str(out), "--n-per-class", "4", "--seed", "3", "--filter-data", str(root / "prepared"),
            "--params", str(root / "params.yaml"), "--oversample", "3"]
    assert generate_main(args + ["--keep", "0.5"]) == 0
    assert "6 per class, the best of 12 draws" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    flt = manifest["filter"]
    assert flt["oversample"] == 3 and flt["drawn_per_class"] == 12 and flt["kept_per_class"] == 6
    assert flt["ensemble"]["members"] == 2 and flt["ensemble"]["data"] == str(root / "prepared") and flt["ensemble"]["data_digest"]
    mild = [f for f in manifest["files"] if f["class"] == "mild"]
    assert len(mild) == 6 and all(0 <= f["filter_score"] <= 1 and 0 <= f["draw_index"] < 12 for f in mild)
    scores = [f["filter_score"] for f in mild]
    draw = SynthModel.load(root / "model.pt").sample(np.ones(12, int), mild[0]["seed"])
    for entry in mild:  # each kept slice is the draw the manifest says it is
        assert np.array_equal(np.asarray(Image.open(out / entry["path"])), draw[entry["draw_index"]])
    cfg = with_overrides(repo_config(), {"evaluate.filter.members": 2, "evaluate.filter.epochs": 2, "evaluate.classifier.min_steps": 20})
    ensemble, _ = filtering.ensemble_from_prepared(root / "prepared", 2, 2, 3, CPU, cfg.evaluate.classifier)  # the export's, retrained
    all_scores = ensemble.scores(draw, np.ones(12, int))
    assert np.allclose(sorted(scores), sorted(all_scores)[-6:], atol=1e-5)  # the kept six are the six best-scored draws
    # --keep defaults to 1/K: --n-per-class slices per class
    assert generate_main(args) == 0 and len(json.loads((out / "manifest.json").read_text())["files"]) == 8


def test_filter_settings_are_checked_with_one_line_errors(export_inputs, tmp_path, capsys):
    for argv, message in ((["--keep", "0.5"], "--keep must be a share between 0 and 1, with --oversample above 1"),
                          (["--oversample", "0"], "--oversample must be 1..64"),
                          (["--oversample", "4", "--keep", "0.01", "--n-per-class", "2"], "keeps no slice"),
                          (["--oversample", "2", "--from", "data/prepared", "--to-class", "mild"], "use one or the other")):
        with pytest.raises(SystemExit) as stop:
            generate_main(["--out", str(tmp_path / "o"), *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    model = ["--model", str(export_inputs / "model.pt"), "--out", str(tmp_path / "o"), "--oversample", "2"]
    assert generate_main(model + ["--params", str(tmp_path / "none.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--params" in err and "none.yaml" in err
    assert generate_main(model + ["--params", str(export_inputs / "params.yaml"), "--filter-data", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--filter-data" in err and "not a prepared dataset" in err
    assert not (tmp_path / "o").exists()  # nothing written
    with pytest.raises(ConfigError, match=r"generate: keep 0.01 of oversample 4 × n_per_class 10 keeps no slice"):
        repo_config({"generate.oversample": 4, "generate.keep": 0.01, "generate.n_per_class": 10})
    with pytest.raises(ConfigError, match=r"generate: keep 0.5 needs oversample > 1"):
        repo_config({"generate.keep": 0.5})
    with pytest.raises(ConfigError, match=r"evaluate.filter.members = 1"):
        repo_config({"evaluate.filter.members": 1})


def test_evaluate_scores_the_filter_beside_the_unfiltered_samples_and_skips_it_for_a_tiny_cohort(cohort, tmp_path, monkeypatch, caplog):
    """pipeline.evaluate's utility with evaluate.filter: the ensemble on folds of the training subjects,
    TSTR / GAN-test / the best use again with filtered samples; a class with one training subject
    (data.train_fraction) leaves the filter out with a warning instead of failing evaluate."""
    import logging

    from brainsynth.pipeline import evaluate

    monkeypatch.chdir(tmp_path)  # the utility cache lands here
    monkeypatch.setattr(evaluate, "utility_cache_key", lambda cfg, model: "test")
    cfg = repo_config({"evaluate.utility_seeds": 1, "evaluate.utility_epochs": 4, "evaluate.synthetic_per_real": [1.0], "evaluate.pretrain": False,
                       "evaluate.filter.members": 2, "evaluate.filter.epochs": 4, "evaluate.judge.max_iter": 20})
    model = type("ToyModel", (), {"sample": staticmethod(half_wrong), "device": CPU})()
    images, labels, subjects = cohort
    rng = np.random.default_rng(2)
    test_y = rng.integers(0, 2, 64)
    test_x = _blobs(test_y, rng)
    graded = {"gan_test": (half_wrong(test_y, 9), test_y)}
    log = logging.getLogger("test")
    summary, _ = evaluate.utility_metrics(cfg, model, images, labels, subjects, test_x, test_y, CLASSES, graded, np.random.default_rng(0), log)
    assert summary["filter_members"] == 2 and summary["filter_held_out_balanced_accuracy"] > 0.9
    assert summary["tstr_filtered_balanced_accuracy_mean"] > summary["tstr_balanced_accuracy_mean"] + 0.2
    assert summary["gan_test_filtered_balanced_accuracy"] > summary["gan_test_balanced_accuracy"] + 0.2
    assert "judge_tstr_filtered_balanced_accuracy_mean" in summary and "augment_gain_filtered_mean" in summary
    one_subject = np.where(labels == 1, "only-one", subjects)
    monkeypatch.setattr(evaluate, "utility_cache_key", lambda cfg, model: "tiny")
    with caplog.at_level(logging.WARNING, logger="test"):
        summary, _ = evaluate.utility_metrics(cfg, model, images, labels, one_subject, test_x, test_y, CLASSES, graded, np.random.default_rng(0), log)
    assert "filtered export not scored: a class has 1 training subject" in caplog.text
    assert "tstr_balanced_accuracy_mean" in summary and not [k for k in summary if "filter" in k]


def test_the_generate_stage_writes_the_filtered_export(export_inputs, tmp_path, monkeypatch):
    """generate.oversample > 1 in the DVC stage: data/synthetic holds the kept slices, the manifest the
    filter and the ensemble trained on data/prepared's training split."""
    import shutil

    from helpers import write_params

    from brainsynth.pipeline import generate
    from brainsynth.pipeline.stage import run_stage

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "models" / "train").mkdir(parents=True)
    shutil.copy(export_inputs / "model.pt", tmp_path / "models" / "train" / "model.pt")
    shutil.copytree(export_inputs / "prepared", tmp_path / "data" / "prepared")
    write_params(tmp_path / "params.yaml", {"mlflow": {"experiment": "gen"}, "train": {"device": "cpu"},
                                            "generate": {"enabled": True, "n_per_class": 2, "oversample": 3},
                                            "evaluate": {"filter": {"members": 2, "epochs": 2}, "classifier": {"min_steps": 20}}})
    run_stage("generate", generate.run)
    manifest = json.loads((tmp_path / "data" / "synthetic" / "manifest.json").read_text())
    assert manifest["filter"]["drawn_per_class"] == 6 and manifest["filter"]["kept_per_class"] == 2
    assert manifest["filter"]["ensemble"]["data"] == "data/prepared" and len(manifest["files"]) == 4
    assert json.loads((tmp_path / "metrics" / "generate.json").read_text()) == {"generate": {"n_images": 4}}
