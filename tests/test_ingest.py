"""Ingesting users' folders: images of every mode, NIfTI volumes and DICOM series, with broken files
counted (not fatal) up to data.max_bad_fraction, and one-line errors for what must be fixed."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import data_config, repo_config
from PIL import Image

from brainsynth.data.errors import DataError
from brainsynth.data.ingest import check_bad_fraction, ingest

OASIS = r"(OAS\d_\d+_MR\d+)"


data_cfg = data_config


def brain_disc(height: int, width: int, value: int = 200, dtype=np.uint8) -> np.ndarray:
    """A bright ellipse on black, like a skull-stripped slice."""
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (0.4 * height)) ** 2 + ((xx - width / 2) / (0.4 * width)) ** 2 < 1
    return (inside * value).astype(dtype)


def oasis_name(subject: int, index: int, suffix: str) -> str:
    return f"OAS1_{subject:04d}_MR1_mpr-1_{index}{suffix}"


@pytest.fixture
def image_tree(tmp_path):
    """Two classes × 3 subjects × 2 slices in mixed modes, plus one broken file of each kind."""
    root = tmp_path / "Data"
    writers = [
        (".png", lambda: Image.fromarray(brain_disc(40, 30))),                                  # 8-bit gray
        (".png", lambda: Image.fromarray(brain_disc(40, 40, 60000, np.uint16))),              # 16-bit
        (".jpg", lambda: Image.fromarray(np.stack([brain_disc(48, 24)] * 3, axis=-1))),      # RGB JPEG
        (".tif", lambda: Image.fromarray(brain_disc(32, 32, 4000, np.uint16))),               # 16-bit TIFF
        (".bmp", lambda: Image.fromarray(brain_disc(20, 20))),                                # 8-bit BMP
        (".png", lambda: Image.fromarray(brain_disc(8, 8))),                                  # smaller than 16 px
    ]
    n = 0
    for c, cls in enumerate(("Mild Dementia", "Non Demented")):
        (root / cls).mkdir(parents=True)
        for s in range(3):
            for i in range(2):
                suffix, make = writers[n % len(writers)]
                make().save(root / cls / oasis_name(10 * c + s, i, suffix))
                n += 1
    (root / "Non Demented" / oasis_name(90, 0, ".png")).write_bytes(b"")                       # zero bytes
    jpeg = root / "Non Demented" / oasis_name(91, 0, ".jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:300])                                                  # truncated
    (root / "Mild Dementia" / oasis_name(92, 0, ".png")).write_bytes(b"this is not a png")    # garbage
    (root / "Mild Dementia" / "notes.txt").write_text("scan protocol")                         # not an image
    (root / "Mild Dementia" / ".DS_Store").write_bytes(b"\0")                                  # hidden: ignored
    return root


def test_image_folder_every_mode_and_broken_files_counted(image_tree):
    result = ingest(data_cfg(image_tree, max_bad_fraction=0.5))
    cohort = result.cohort
    assert cohort.images.shape == (12, 16, 16) and cohort.images.dtype == np.uint8
    assert cohort.class_names == ["Mild Dementia", "Non Demented"]
    assert np.bincount(cohort.labels).tolist() == [6, 6]
    assert len(set(cohort.subjects)) == 6  # two slices per OASIS subject
    # every converted slice shows the bright ellipse in the middle and black corners
    assert (cohort.images[:, 8, 8] > 100).all() and (cohort.images[:, 0, 0] < 20).all()
    counts = result.counts()
    assert counts["files"] == 16
    assert counts["skipped_empty_file"] == 1 and counts["skipped_unsupported_file"] == 1
    assert counts["skipped_truncated"] + counts.get("skipped_unreadable", 0) == 2
    assert counts["skipped"] == 4 and counts["upsampled"] == 2  # the 8×8 images
    assert result.pixel_mm is None  # PNG/JPEG carry no pixel spacing: the export says so instead of inventing 1 mm


def test_skip_report_lists_each_file_and_bad_fraction_fails_naming_examples(image_tree, tmp_path):
    result = ingest(data_cfg(image_tree))
    report = result.write_report(tmp_path / "skipped.csv")
    lines = report.read_text().splitlines()
    assert lines[0] == "path,reason" and len(lines) == 5
    assert any("notes.txt,unsupported_file" in line for line in lines)
    with pytest.raises(DataError, match=r"4 of 16 files unusable \(25.0% > data.max_bad_fraction 0.05\), e.g. .*skipped.csv"):
        check_bad_fraction(result, 0.05, str(image_tree), report)
    check_bad_fraction(result, 0.3, str(image_tree), report)  # under the limit: no error


def test_subject_pattern_must_match_every_file(tmp_path):
    for name in ("a_1.png", "a_2.png", "b_1.png"):
        Image.fromarray(brain_disc(16, 16)).save(tmp_path / name)
    with pytest.raises(DataError, match=r"data.subject_pattern .* does not match .*a_1.png.*\(3 of 3\)"):
        ingest(data_cfg(tmp_path, subject_pattern=OASIS))
    by_file = ingest(data_cfg(tmp_path, subject_pattern=""))
    assert by_file.cohort.class_names == ["unlabelled"] and len(set(by_file.cohort.subjects)) == 3
    by_prefix = ingest(data_cfg(tmp_path, subject_pattern=r"^([a-z])_"))
    assert sorted(by_prefix.cohort.subjects) == ["a", "a", "b"]


def test_parallel_workers_give_the_same_cohort(tmp_path):
    for i in range(80):
        Image.fromarray(brain_disc(20 + i % 7, 24, 100 + i)).save(tmp_path / oasis_name(i // 4, i, ".png"))
    serial = ingest(data_cfg(tmp_path, workers=1)).cohort
    parallel = ingest(data_cfg(tmp_path, workers=2)).cohort
    assert np.array_equal(serial.images, parallel.images) and np.array_equal(serial.subjects, parallel.subjects)


def test_folder_errors_are_one_line_and_name_the_culprit(tmp_path):
    cases = []
    with pytest.raises(DataError, match="does not exist") as err:
        ingest(data_cfg(tmp_path / "missing"))
    cases.append(err)
    with pytest.raises(DataError, match="is empty") as err:
        ingest(data_cfg(tmp_path))
    cases.append(err)
    (tmp_path / "AD").mkdir()
    Image.fromarray(brain_disc(16, 16)).save(tmp_path / "AD" / oasis_name(1, 1, ".png"))
    (tmp_path / "CN").mkdir()
    (tmp_path / "CN" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder .*CN.* contains no images") as err:
        ingest(data_cfg(tmp_path))
    cases.append(err)
    (tmp_path / "CN" / "vol.nii").write_bytes(b"x" * 400)
    with pytest.raises(DataError, match=r"mixes 1 images, 1 NIfTI volumes; set data.format") as err:
        ingest(data_cfg(tmp_path))
    cases.append(err)
    with pytest.raises(DataError, match=r"is a file") as err:
        ingest(data_cfg(tmp_path / "CN" / "readme.txt"))
    cases.append(err)
    assert all("\n" not in str(e.value) for e in cases)


# --- NIfTI -------------------------------------------------------------------------------------


def head_volume(shape=(30, 36, 24), marker: bool = True) -> np.ndarray:
    """An ellipsoid 'brain' in a RAS-ordered array (x right, y anterior, z superior) whose axial
    area peaks mid-way; a bright anterior blob marks the front."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = ((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 < 1) * 300.0
    if marker:
        volume[(np.abs(x) < 0.2) & (y > 0.55) & (y < 0.8) & (np.abs(z) < 0.5)] = 1000.0
    return volume.astype(np.float32)


def save_nifti(path, volume, zooms=(1.0, 1.0, 2.0)):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([*zooms, 1.0])), path)


def test_nifti_volumes_sliced_in_the_brain_range_anterior_up(tmp_path):
    for cls in ("AD", "CN"):
        for s in range(3):
            save_nifti(tmp_path / cls / f"sub-{cls}{s}_T1w.nii.gz", head_volume())
    save_nifti(tmp_path / "CN" / "sub-4d_bold.nii.gz", np.stack([head_volume()] * 3, axis=-1))
    save_nifti(tmp_path / "CN" / "sub-single_T1w.nii", head_volume()[..., None])  # 4-D with one frame: fine
    truncated = tmp_path / "AD" / "sub-cut_T1w.nii.gz"
    save_nifti(truncated, head_volume())
    truncated.write_bytes(truncated.read_bytes()[:500])
    result = ingest(data_cfg(tmp_path, max_bad_fraction=0.5, subject_pattern='', volume__min_area_fraction=0.5))
    cohort, counts = result.cohort, result.counts()
    assert result.kind == "nifti" and cohort.class_names == ["AD", "CN"]
    assert counts["skipped_volume_4d"] == 1 and counts["skipped_truncated"] + counts.get("skipped_unreadable", 0) == 1
    subjects = sorted(set(cohort.subjects))
    assert len(subjects) == 7 and "CN/sub-single_T1w.nii" in subjects and "AD/sub-AD0_T1w.nii.gz" in subjects  # path below data.source
    per_volume = np.sum(cohort.subjects == "AD/sub-AD0_T1w.nii.gz")
    assert 8 <= per_volume < 24  # slices where the ellipsoid is large, not the empty top and bottom
    # axial slices: the anterior marker is the brightest part and sits in the upper half
    one = cohort.images[cohort.subjects == "AD/sub-AD0_T1w.nii.gz"][per_volume // 2].astype(float)
    assert one[:8].max() == 255 and one[8:].max() < 255
    # anisotropic voxels respected: 30 × 1 mm wide, 36 × 1 mm high → narrower than tall
    cols = np.flatnonzero(one.max(axis=0) > 0)
    rows = np.flatnonzero(one.max(axis=1) > 0)
    assert len(cols) < len(rows)
    assert result.pixel_mm == 36 / 16  # the longer side, 36 mm, over 16 px: what an export writes into NIfTI headers


def test_nifti_slice_axis_and_thinning(tmp_path):
    for s in range(3):
        save_nifti(tmp_path / f"s{s}.nii.gz", head_volume(marker=False), zooms=(1.0, 1.0, 1.0))
    axial = ingest(data_cfg(tmp_path, subject_pattern='', volume__slices_per_volume=5)).cohort
    assert len(axial.images) == 15
    sagittal = ingest(data_cfg(tmp_path, subject_pattern='', volume__slice_axis=0, volume__min_area_fraction=0.9)).cohort
    assert 0 < len(sagittal.images) and not np.array_equal(sagittal.images[0], axial.images[0])


# --- DICOM -------------------------------------------------------------------------------------


def write_dicom(path, pixels: np.ndarray, z: float, patient: str, slope: float = 1.0, intercept: float = 0.0, pixel_data: bool = True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = patient, "MR"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.InstanceNumber = 1  # deliberately useless: the order must come from the position
    ds.PixelSpacing = [1.0, 1.0]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixel_data:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_series_ordered_by_position_rescaled_and_bad_files_skipped(tmp_path):
    radii = [4, 6, 8, 10, 12]  # the disc grows with z
    for cls in ("AD", "CN"):
        for p in range(3):
            series = tmp_path / cls / f"patient{p}" / "t1"
            for k, radius in enumerate(radii):
                yy, xx = np.mgrid[:32, :32]
                disc = ((yy - 16) ** 2 + (xx - 16) ** 2 < radius**2) * 500
                # file names run against z, and the last slice's stored values are halved with slope 2
                slope = 2.0 if k == len(radii) - 1 else 1.0
                write_dicom(series / f"IM{len(radii) - k:04d}", disc / slope, z=2.0 * k, patient=f"{cls}-{p}", slope=slope)
    write_dicom(tmp_path / "CN" / "patient0" / "t1" / "localizer.dcm", np.zeros((32, 32)), z=99, patient="CN-0", pixel_data=False)
    (tmp_path / "AD" / "patient1" / "t1" / "broken.dcm").write_bytes(b"\0" * 200)
    result = ingest(data_cfg(tmp_path, max_bad_fraction=0.5, subject_pattern='', volume__min_area_fraction=0.01))
    cohort, counts = result.cohort, result.counts()
    assert result.kind == "dicom" and cohort.class_names == ["AD", "CN"]
    assert counts["skipped_no_pixel_data"] == 1 and counts["skipped_unreadable"] == 1
    assert sorted(set(cohort.subjects)) == [f"{c}-{p}" for c in ("AD", "CN") for p in range(3)]
    one = cohort.images[cohort.subjects == "AD-0"]
    areas = (one > 100).sum(axis=(1, 2))
    assert len(one) == 5 and (np.diff(areas) > 0).all()  # ordered by ImagePositionPatient, not file name
    # rescale slope applied: the last slice (stored at half value, slope 2) is as bright as the others
    assert one[-1].max() == one[-2].max() == 255
    assert result.pixel_mm == 32 * 1.0 / 16  # PixelSpacing 1 mm × 32 px over 16 px


# --- subjects are persons (regression tests for the subject leak) -----------------------------


def test_default_pattern_groups_rescans_and_visits_of_one_person(tmp_path):
    """OASIS-1 reliability rescans (MR1/MR2) and OASIS-2 follow-up visits are one person: the
    default data.subject_pattern must keep them in one split."""
    names = ["OAS1_0061_MR1_mpr-1_100.png", "OAS1_0061_MR2_mpr-1_100.png", "OAS2_0001_MR1_a.png", "OAS2_0001_MR3_a.png",
             "OAS1_0002_MR1_mpr-1_100.png"]
    for name in names:
        (tmp_path / "CN").mkdir(exist_ok=True)
        Image.fromarray(brain_disc(16, 16)).save(tmp_path / "CN" / name)
    cohort = ingest(data_cfg(tmp_path, subject_pattern=repo_config().data.subject_pattern)).cohort
    assert sorted(cohort.subjects) == ["OAS1_0002", "OAS1_0061", "OAS1_0061", "OAS2_0001", "OAS2_0001"]


def test_same_file_name_in_two_class_folders_is_two_subjects(tmp_path):
    for cls in ("AD", "CN"):
        (tmp_path / cls).mkdir()
        Image.fromarray(brain_disc(16, 16)).save(tmp_path / cls / "001.png")
    cohort = ingest(data_cfg(tmp_path, subject_pattern="")).cohort
    assert sorted(cohort.subjects) == ["AD/001.png", "CN/001.png"]


def test_nifti_named_alike_in_patient_folders_are_separate_subjects_or_follow_the_pattern(tmp_path):
    for cls, patient in (("AD", "sub-01"), ("AD", "sub-02"), ("CN", "sub-03"), ("CN", "sub-03-rescan")):
        save_nifti(tmp_path / cls / patient / "T1.nii.gz", head_volume(marker=False))
    by_path = ingest(data_cfg(tmp_path, subject_pattern="")).cohort
    assert sorted(set(by_path.subjects)) == ["AD/sub-01/T1.nii.gz", "AD/sub-02/T1.nii.gz", "CN/sub-03-rescan/T1.nii.gz", "CN/sub-03/T1.nii.gz"]
    bids = ingest(data_cfg(tmp_path, subject_pattern=r"(sub-\d+)")).cohort
    assert sorted(set(bids.subjects)) == ["sub-01", "sub-02", "sub-03"]


def test_prepare_refuses_a_split_that_shares_a_person():
    from brainsynth.data.splits import check_subjects_isolated

    subjects = np.array(["p1", "p1", "p2", "p3"])
    check_subjects_isolated(subjects, np.array(["train", "train", "val", "test"]))
    with pytest.raises(DataError, match=r"subject 'p1' appears in splits test, train"):
        check_subjects_isolated(subjects, np.array(["train", "test", "val", "test"]))


# --- data.subject_pattern: auto -------------------------------------------------------------


def _write_pngs(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(brain_disc(16, 16)).save(root / name)


AUTO_CORPORA = {  # convention → (file names: 2 classes × 4 persons × 2 sessions, the persons expected)
    "OASIS": ([f"{c}/OAS1_{int(c == 'AD')}{p:03d}_MR{s}_mpr-1_100.png" for c in ("AD", "CN") for p in range(4) for s in (1, 2)],
              {f"OAS1_{a}{p:03d}" for a in (0, 1) for p in range(4)}),
    "ADNI": ([f"{c}/{100 + 10 * (c == 'AD') + p:03d}_S_{4000 + p}/visit{s}.png" for c in ("AD", "CN") for p in range(4) for s in (1, 2)],
             {f"{100 + 10 * a + p:03d}_S_{4000 + p}" for a in (0, 1) for p in range(4)}),
    "BIDS": ([f"{c}/sub-{c}{p}/ses-{s}/anat/sub-{c}{p}_ses-{s}_T1w.png" for c in ("AD", "CN") for p in range(4) for s in (1, 2)],
             {f"sub-{c}{p}" for c in ("AD", "CN") for p in range(4)}),
}


@pytest.mark.parametrize("convention", sorted(AUTO_CORPORA))
def test_auto_subject_pattern_recognises_each_convention_and_keeps_sessions_together(tmp_path, convention, caplog):
    from brainsynth.data.splits import check_subjects_isolated, split_by_subject

    names, persons = AUTO_CORPORA[convention]
    _write_pngs(tmp_path, names)
    with caplog.at_level("INFO", logger="brainsynth.data"):
        cohort = ingest(data_cfg(tmp_path, subject_pattern="auto")).cohort
    assert set(cohort.subjects) == persons and len(cohort.subjects) == 16
    assert f"data.subject_pattern auto: {convention} names" in caplog.text and "8 persons in 16" in caplog.text
    splits = split_by_subject(cohort.subjects, cohort.labels, 0.25, 0.25, seed=0)
    check_subjects_isolated(cohort.subjects, splits)
    assert {"train", "val", "test"} == set(splits)


def test_auto_subject_pattern_takes_dicom_patient_ids(tmp_path, caplog):
    from brainsynth.data.splits import check_subjects_isolated, split_by_subject

    yy, xx = np.mgrid[:32, :32]
    for cls in ("AD", "CN"):
        for p in range(4):
            for series in ("t1_a", "t1_b"):  # two series of one patient
                for k in range(3):
                    write_dicom(tmp_path / cls / f"folder{p}" / series / f"IM{k}", ((yy - 16) ** 2 + (xx - 16) ** 2 < 100) * 500.0,
                                z=2.0 * k, patient=f"Patient {cls} {p}")
    with caplog.at_level("INFO", logger="brainsynth.data"):
        cohort = ingest(data_cfg(tmp_path, subject_pattern="auto", volume__min_area_fraction=0.01)).cohort
    assert set(cohort.subjects) == {f"Patient {c} {p}" for c in ("AD", "CN") for p in range(4)}
    assert "auto: DICOM PatientID: 8 persons in 16 series" in caplog.text
    check_subjects_isolated(cohort.subjects, split_by_subject(cohort.subjects, cohort.labels, 0.25, 0.25, seed=0))


def test_auto_subject_pattern_refuses_a_corpus_no_convention_names(tmp_path):
    _write_pngs(tmp_path, ["AD/OAS1_0001_MR1.png", "AD/sub-02.png", "CN/scan_003.png"])
    with pytest.raises(DataError) as err:
        ingest(data_cfg(tmp_path, subject_pattern="auto"))
    message = str(err.value)
    assert message.startswith("data.subject_pattern auto: no convention") and "set data.subject_pattern to a regex" in message
    assert "\n" not in message
