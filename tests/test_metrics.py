import numpy as np
import pytest
from helpers import repo_config
from scipy import ndimage

from brainsynth import metrics
from brainsynth.data.embedded import build_cohort


@pytest.fixture(scope="module")
def brains():
    cohort = build_cohort(repo_config({"data.embedded.n_subjects": 12, "data.embedded.slices_per_subject": 8}).data.embedded, 32, seed=5)
    return cohort.images


def test_swd_of_a_set_with_itself_is_zero(brains):
    result = metrics.swd(brains, brains, seed=0, patches_per_image=16, directions=64)
    assert result["swd"] == pytest.approx(0.0, abs=1e-9)
    assert set(result) == {"swd", "swd_32", "swd_16"}


def test_swd_grows_monotonically_with_blur(brains):
    def blurred(sigma):
        return np.stack([ndimage.gaussian_filter(b.astype(float), sigma) for b in brains]).round().astype(np.uint8)

    values = [metrics.swd(brains, blurred(s), seed=0, patches_per_image=32, directions=128)["swd"] for s in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]


def test_swd_grows_monotonically_as_the_distribution_shifts(brains):
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, brains.shape)

    def shifted(sigma):
        return np.clip(brains + sigma * noise, 0, 255).astype(np.uint8)

    values = [metrics.swd(brains, shifted(s), seed=0, patches_per_image=32, directions=128)["swd"] for s in (2, 8, 32)]
    assert values[0] < values[1] < values[2]


def test_swd_ignores_global_brightness_and_contrast(brains):
    # Descriptors are normalised per set (as in ProGAN): a global affine intensity change is invisible.
    changed = (brains // 2 + 60).astype(np.uint8)
    assert metrics.swd(brains, changed, seed=0, patches_per_image=32, directions=128)["swd"] < 5.0


def test_swd_requires_equal_sets(brains):
    with pytest.raises(ValueError, match="equal-sized"):
        metrics.swd(brains[:10], brains[:11], seed=0)


def test_ms_ssim_of_identical_pairs_is_one_and_real_pairs_below(brains):
    twins = np.repeat(brains[:1], 5, axis=0)
    assert metrics.ms_ssim_pairs(twins, 8, seed=0) == pytest.approx(1.0, abs=1e-5)
    assert metrics.ms_ssim_pairs(brains, 32, seed=0) < 0.95


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256, 512])
def test_ms_ssim_settings_are_valid_for_every_size(size):
    win, weights = metrics.ms_ssim_settings(size)
    assert win % 2 == 1 and abs(sum(weights) - 1) < 1e-9
    assert size / 2 ** (len(weights) - 1) >= 2 * win or len(weights) == 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    value = metrics.ms_ssim_pairs(images, 2, seed=0)
    assert 0 <= value < 1


def test_psnr_and_ssim(brains):
    assert metrics.psnr(brains, brains) == 100.0
    assert metrics.mean_ssim(brains, brains) == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(brains.astype(int) + np.random.default_rng(0).integers(-20, 20, brains.shape), 0, 255).astype(np.uint8)
    assert 20 < metrics.psnr(brains, noisy) < 40
    assert metrics.mean_ssim(brains, noisy) < 0.99


def test_memorization_flags_copies_not_held_out_images():
    cohort = build_cohort(repo_config({"data.embedded.n_subjects": 24, "data.embedded.slices_per_subject": 6}).data.embedded, 32, seed=5)
    by_subject = {s: i for i, s in enumerate(np.unique(cohort.subjects))}
    group = np.array([by_subject[s] % 3 for s in cohort.subjects])  # subject-level split: train / held-out / test
    train, held_out, test = (cohort.images[group == g] for g in range(3))
    copies = np.concatenate([train[:20], train[20:40, :, ::-1]])  # verbatim and mirrored training images
    copied = metrics.memorization_audit(copies, test[:40], train)
    assert copied["memorization_rate"] == 1.0 and copied["nn_ratio"] < 0.05
    fresh = metrics.memorization_audit(held_out[:40], test[:40], train)
    assert fresh["memorization_rate"] <= 0.1 and 0.7 < fresh["nn_ratio"] < 1.4


def test_nearest_distances_find_the_exact_match():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 255, (30, 16, 16), dtype=np.uint8)
    queries = references[[4, 17]].copy()
    queries[1, 0, 0] ^= 1  # one grey level off in one pixel
    dist, index = metrics.nearest_distances(queries, references)
    assert index.tolist() == [4, 17] and dist[0] == 0 and 0 < dist[1] < 0.1


def test_fid_is_skipped_without_local_weights(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    values, note = metrics.fid_kid(np.zeros((4, 32, 32), np.uint8), np.zeros((4, 32, 32), np.uint8))
    assert values == {} and note.startswith("skipped: no local Inception weights")


def test_tstr_classifier_learns_a_class_signal():
    import torch

    from brainsynth.classifiers.slice import accuracy, train_classifier

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    yy, xx = np.mgrid[:32, :32]
    radius = np.where(labels, 11, 7)[:, None, None] + rng.normal(0, 0.7, (300, 1, 1))  # class = disc size
    discs = ((yy - 16) ** 2 + (xx - 16) ** 2 < radius**2) * 180.0
    images = np.clip(discs + rng.normal(0, 25, (300, 32, 32)), 0, 255).astype(np.uint8)
    from helpers import repo_config

    classifier = train_classifier(images[:240], labels[:240], 2, epochs=15, seed=0, device=torch.device("cpu"),
                                  recipe=repo_config().evaluate.classifier)
    assert accuracy(classifier, images[240:], labels[240:]) > 0.85
    # Grading images against the wrong intended class (what gan_test_accuracy catches) scores low.
    assert accuracy(classifier, images[240:], 1 - labels[240:]) < 0.15


def test_figure_rows_spread_over_classes_and_subjects():
    """the real row of a figure shows the data's range, not ten consecutive slices of one subject."""
    from brainsynth.viz import spread_indices

    labels = np.repeat([0, 1, 2], 20)
    subjects = np.array([f"s{k}-{i // 5}" for k, i in zip(labels, np.tile(np.arange(20), 3))])  # 4 subjects × 5 slices per class
    picked = spread_indices(labels, subjects, 9, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 9
    assert list(labels[picked]) == [0, 1, 2] * 3  # takes turns over the classes
    assert len(set(subjects[picked])) == 9  # no subject twice while others are left
    assert len(spread_indices(labels[:3], subjects[:3], 10, np.random.default_rng(0))) == 3  # fewer images than asked
