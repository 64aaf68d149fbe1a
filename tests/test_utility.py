"""Downstream utility, anatomy measures and scarcity (the measurement side)."""

import numpy as np
import pytest
import torch
from helpers import merged, repo_config, repo_params

from brainsynth import metrics
from brainsynth.classifiers.slice import class_scores
from brainsynth.config import ConfigError, validate
from brainsynth.data.embedded import _subject_slices, load_anatomy
from brainsynth.data.splits import split_by_subject, subsample_train_subjects
from brainsynth.evaluation.downstream import UtilityResult, balanced_synthetic_labels, utility


def _cohort(n_subjects=40, per_subject=5, classes=(0.5, 0.25, 0.25)):
    rng = np.random.default_rng(0)
    grades = rng.choice(len(classes), n_subjects, p=classes)
    subjects = np.repeat([f"s{i:03d}" for i in range(n_subjects)], per_subject)
    labels = np.repeat(grades, per_subject)
    return subjects, labels


def test_train_fraction_keeps_whole_subjects_per_class_and_leaves_val_test_alone():
    subjects, labels = _cohort()
    splits = split_by_subject(subjects, labels, 0.15, 0.15, seed=3)
    scarce = subsample_train_subjects(subjects, labels, splits, 0.25, seed=3)
    for split in ("val", "test"):
        assert np.array_equal(scarce == split, splits == split)
    kept, dropped = set(subjects[scarce == "train"]), set(subjects[scarce == "unused"])
    assert kept and dropped and not kept & dropped  # a subject is kept or dropped whole
    assert set(subjects[splits == "train"]) == kept | dropped
    for k in np.unique(labels):
        before = len(set(subjects[(splits == "train") & (labels == k)]))
        after = len(set(subjects[(scarce == "train") & (labels == k)]))
        assert after == max(1, round(0.25 * before))  # per class, never a class lost
    assert np.array_equal(subsample_train_subjects(subjects, labels, splits, 0.25, seed=3), scarce)  # seeded
    assert subsample_train_subjects(subjects, labels, splits, 1.0, seed=3) is splits


def test_balanced_accuracy_and_macro_f1_expose_a_majority_guesser():
    labels = np.array([0] * 8 + [1] + [2])
    majority = np.zeros(10, int)
    scores = class_scores(majority, labels)
    assert (majority == labels).mean() == 0.8
    assert scores["balanced_accuracy"] == pytest.approx(1 / 3)
    assert scores["macro_f1"] == pytest.approx((2 * 0.8 / 1.8) / 3)
    assert class_scores(labels, labels) == {"balanced_accuracy": 1.0, "macro_f1": 1.0}


def test_summary_reports_mean_std_gain_per_seed_and_ratio():
    result = UtilityResult(uses=["mix25", "mix100", "pretrain"])
    rows = {"trtr": (0.6, 0.8), "tstr": (0.3, 0.5), "mix25": (0.62, 0.78), "mix100": (0.7, 0.8), "pretrain": (0.5, 0.7),
            "duplicate_mix25": (0.6, 0.8), "duplicate_mix100": (0.66, 0.78)}
    for kind, values in rows.items():
        for v in values:
            result.add(kind, {"balanced_accuracy": v, "macro_f1": v})
    out = result.summary()
    assert out["trtr_balanced_accuracy_mean"] == pytest.approx(0.7)
    assert out["trtr_balanced_accuracy_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert out["gain_mix25_mean"] == pytest.approx(0.0) and out["gain_pretrain_mean"] == pytest.approx(-0.1)
    # the best use (mix100) is what augment_gain reports, against real-only and against its duplicate-real control
    assert out["augment_gain_mean"] == pytest.approx(0.05)  # (0.1 + 0.0) / 2, paired by seed
    assert out["augment_gain_std"] == pytest.approx(np.std([0.1, 0.0], ddof=1))
    assert out["augment_gain_vs_duplicate_mean"] == pytest.approx(0.03)  # (0.04 + 0.02) / 2
    assert out["tstr_ratio"] == pytest.approx(0.4 / 0.7)


def test_balanced_synthetic_labels_spread_evenly():
    labels = balanced_synthetic_labels(10, 3, seed=0)
    assert len(labels) == 10 and sorted(np.bincount(labels)) == [3, 3, 4]


def _blobs(labels, rng, size=16):
    """Class 1 is a bright disc, class 0 a dim one, with noise."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    level = np.where(labels == 1, 200.0, 60.0)[:, None, None]
    return np.clip(disc * level + rng.normal(0, 15, (len(labels), size, size)), 0, 255).astype(np.uint8)


def test_utility_on_a_toy_task_with_known_answers():
    """Real data carries the class (brightness); a 'generator' that draws the wrong class is useless
    alone (TSTR far below TRTR) and harmful as augmentation; a faithful one matches real data."""
    rng = np.random.default_rng(0)
    train_y, test_y = rng.integers(0, 2, 256), rng.integers(0, 2, 64)  # ≥ 40 steps: BatchNorm statistics settle
    train_x, test_x = _blobs(train_y, rng), _blobs(test_y, rng)
    faithful = lambda labels, seed: _blobs(np.asarray(labels), np.random.default_rng(seed))  # noqa: E731
    swapped = lambda labels, seed: _blobs(1 - np.asarray(labels), np.random.default_rng(seed))  # noqa: E731
    kwargs = dict(n_classes=2, epochs=10, device=torch.device("cpu"), recipe=repo_config().evaluate.classifier, pretrain=False)
    good = utility(train_x, train_y, faithful, test_x, test_y, seeds=[0, 1], ratios=[1.0], **kwargs).summary()
    # Twice as many wrong synthetic slices as real ones outvote the real labels.
    bad = utility(train_x, train_y, swapped, test_x, test_y, seeds=[0], ratios=[2.0], **kwargs).summary()
    assert good["trtr_balanced_accuracy_mean"] > 0.9
    assert good["tstr_ratio"] > 0.9 and good["augment_gain_mean"] > -0.05 and good["augment_gain_vs_duplicate_mean"] > -0.05
    assert bad["tstr_balanced_accuracy_mean"] < 0.2 and bad["tstr_ratio"] < 0.25
    assert bad["augment_gain_mean"] < -0.1
    assert bad["augment_gain_vs_duplicate_mean"] < -0.1  # duplicated real slices do not hurt; swapped synthetic ones do
    assert bad["duplicate_mix200_balanced_accuracy_mean"] > 0.9


def test_csf_fraction_ranks_an_atrophy_series():
    """The same synthetic subject (same pose, noise, slices) at increasing atrophy grade: the
    morphometric marker must grow with grade, and the distance between grades with their gap."""
    cfg = repo_config().data.embedded
    anatomy = load_anatomy(cfg.field_of_view_mm / 64, cfg.min_area_fraction)
    series = [np.round(_subject_slices(anatomy, cfg, 64, grade, np.random.default_rng(7)) * 255).astype(np.uint8) for grade in (0, 1, 2)]
    fractions = [metrics.csf_fraction(s) for s in series]
    means = [float(np.nanmean(f)) for f in fractions]
    assert means[0] < means[1] < means[2]
    assert metrics.morphometric_distance(fractions[0], fractions[2]) > metrics.morphometric_distance(fractions[0], fractions[1])
    assert metrics.morphometric_distance(fractions[1], fractions[1]) == 0.0


def test_feature_distances_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(a, a + 3.0) == pytest.approx(72.0, rel=1e-3)  # |Δμ|² = 8 · 9
    same = metrics.precision_recall(a, a.copy())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = metrics.precision_recall(a, a + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    # A collapsed generator (every sample at one real point) is precise but covers little.
    collapsed = metrics.precision_recall(a, np.repeat(a[:1], 200, axis=0))
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1


@pytest.mark.parametrize("key, value, rule", [
    ("data.train_fraction", 0.0, "greater than 0"),
    ("data.train_fraction", 1.5, "less than or equal to 1"),
    ("evaluate.utility_seeds", 0, "greater than or equal to 1"),
    ("evaluate.synthetic_per_real", [0.5, -1], "between 0 and 10"),
])
def test_new_params_are_validated_with_one_line(key, value, rule):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as err:
        validate(merged(repo_params(), {section: {name: value}}))
    message = str(err.value)
    assert key in message and str(value) in message and rule in message and "\n" not in message


def test_a_small_cohort_still_gets_a_trained_classifier():
    """Regression: with a few dozen updates BatchNorm statistics had not settled and every
    classifier of a scarce cohort (data.train_fraction 0.1) predicted one class (balanced accuracy
    exactly 1/K), which made TRTR, TSTR and augment_gain meaningless there."""
    rng = np.random.default_rng(0)
    train_y, test_y = rng.integers(0, 2, 48), rng.integers(0, 2, 64)  # one batch per epoch
    faithful = lambda labels, seed: _blobs(np.asarray(labels), np.random.default_rng(seed))  # noqa: E731
    out = utility(_blobs(train_y, rng), train_y, faithful, _blobs(test_y, rng), test_y, n_classes=2, epochs=2, seeds=[0],
                  ratios=[], pretrain=False, device=torch.device("cpu"), recipe=repo_config().evaluate.classifier).summary()
    assert out["trtr_balanced_accuracy_mean"] > 0.9 and out["tstr_balanced_accuracy_mean"] > 0.9
