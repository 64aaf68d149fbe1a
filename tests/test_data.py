import numpy as np
import pytest
from helpers import data_config, repo_config
from PIL import Image

from brainsynth.data.embedded import CLASS_NAMES, build_cohort
from brainsynth.data.imaging import fit_square, to_gray
from brainsynth.data.ingest import ingest
from brainsynth.data.splits import split_by_subject


@pytest.fixture(scope="module")
def small_cohort():
    return build_cohort(repo_config({"data.embedded.n_subjects": 6, "data.embedded.slices_per_subject": 4}).data.embedded, 32, seed=3)


def test_embedded_cohort_shapes_labels_and_determinism(small_cohort):
    again = build_cohort(repo_config({"data.embedded.n_subjects": 6, "data.embedded.slices_per_subject": 4}).data.embedded, 32, seed=3)
    assert small_cohort.images.shape == (24, 32, 32) and small_cohort.images.dtype == np.uint8
    assert small_cohort.class_names == CLASS_NAMES
    assert set(np.unique(small_cohort.labels)) == {0, 1, 2}
    assert np.array_equal(small_cohort.images, again.images)
    other = build_cohort(repo_config({"data.embedded.n_subjects": 6, "data.embedded.slices_per_subject": 4}).data.embedded, 32, seed=4)
    assert not np.array_equal(small_cohort.images, other.images)


def test_embedded_slices_look_like_brains(small_cohort):
    images = small_cohort.images.astype(float)
    centre = images[:, 10:22, 10:22].mean()
    corners = images[:, :4, :4].mean()
    assert centre > 80 and corners < 30  # bright brain in the middle, dark background


def test_subject_split_never_leaks_and_is_stratified():
    subjects = np.repeat([f"s{i}" for i in range(30)], 5)
    labels = np.repeat(np.arange(30) % 3, 5)
    splits = split_by_subject(subjects, labels, 0.2, 0.2, seed=1)
    for subject in np.unique(subjects):
        assert len(set(splits[subjects == subject])) == 1
    for k in range(3):
        assert {"train", "val", "test"} <= set(splits[labels == k])
    assert np.array_equal(splits, split_by_subject(subjects, labels, 0.2, 0.2, seed=1))


def test_image_folder_with_class_subfolders(tmp_path):
    for cls in ("Non Demented", "Mild Dementia"):
        (tmp_path / cls).mkdir()
        for subject in (1, 2):
            for index in (100, 101):
                Image.fromarray(np.full((40, 30), 120, np.uint8)).save(tmp_path / cls / f"OAS1_000{subject}_MR1_mpr-1_{index}.jpg")
    cohort = ingest(data_config(tmp_path)).cohort
    assert cohort.images.shape == (8, 16, 16)
    assert cohort.class_names == ["Mild Dementia", "Non Demented"]
    assert set(cohort.subjects) == {"OAS1_0001", "OAS1_0002"}
    # aspect kept: a 40×30 image becomes 16×12 centred with black padding left and right
    assert cohort.images[0, :, 0].max() == 0 and cohort.images[0, 8, 8] > 100


def test_sixteen_bit_and_rgb_are_converted():
    sixteen = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    out = fit_square(to_gray(sixteen), 32)
    assert out.dtype == np.uint8 and out.max() > 240 and out.min() < 15
    rgb = Image.fromarray(np.full((20, 20, 3), 90, np.uint8))
    assert fit_square(to_gray(rgb), 8).mean() == pytest.approx(90, abs=1)
