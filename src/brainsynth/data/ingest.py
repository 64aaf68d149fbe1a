"""Bring a user's folder in: find the files, work out classes and subjects, decode in parallel,
and account for every file that could not be used.

Layouts (``data.source`` is the root):

* images: ``root/<class>/**/*.png|jpg|tif|bmp`` or a flat ``root/*.jpg`` (one unlabelled class)
* nifti:  ``root/<class>/**/*.nii[.gz]`` or flat
* dicom:  ``root/<class>/**/<series>/*.dcm`` or ``root/<series>/*.dcm``; a series is the DICOM files
  of one folder

Subjects (persons, never split across train/val/test) come from ``data.subject_pattern`` applied to
the path below the root (images, NIfTI) or the PatientID (DICOM, else the series folder's path);
``auto`` recognises OASIS, ADNI and BIDS names and DICOM PatientIDs; with an empty pattern each
file, volume or series is its own subject (``folder.subject_ids``).

Hidden files and folders (``.DS_Store``, ``.dvc``) are ignored. Every other file that gives no
slice is listed with its reason; above ``data.max_bad_fraction`` of all files the stage fails.
"""

from __future__ import annotations

import csv
import functools
import multiprocessing
import os
import signal
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainsynth.config import DataConfig
from brainsynth.data.embedded import Cohort
from brainsynth.data.errors import DataError
from brainsynth.data.folder import Decoded, decode_image, is_image_file, subject_ids, subject_key
from brainsynth.data.volumes import decode_dicom_series, decode_nifti, is_dicom, is_nifti

UNLABELLED = "unlabelled"
KIND_NOUNS = {"images": "images", "nifti": "NIfTI volumes", "dicom": "DICOM files"}


@dataclass
class Ingested:
    cohort: Cohort
    kind: str  # images | nifti | dicom
    n_files: int  # every non-hidden file under the root
    skipped: list[tuple[str, str]]  # (path relative to the root, reason)
    upsampled: int
    pixel_mm: float | None = None  # median in-plane pixel size over the volumes (None for 2-D images: unknown)

    def counts(self) -> dict[str, float]:
        """Numbers for metrics/prepare.json: files seen, skipped (total and per reason), upsampled."""
        by_reason = Counter(reason for _, reason in self.skipped)
        out: dict[str, float] = {"files": self.n_files, "skipped": len(self.skipped), "upsampled": self.upsampled,
                                 "bad_fraction": round(len(self.skipped) / max(1, self.n_files), 4)}
        out.update({f"skipped_{reason}": n for reason, n in sorted(by_reason.items())})
        return out

    def write_report(self, path: Path) -> Path:
        """CSV of every skipped file and why (the report a user reads to fix their data)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(sorted(self.skipped))
        return path


def visible_files(root: Path) -> list[Path]:
    """Every file under ``root`` whose path has no hidden (dot) component, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in files if not f.startswith("."))
    return sorted(found)


def detect_format(root: Path, files: list[Path]) -> str:
    kinds = Counter("nifti" if is_nifti(f) else "images" if is_image_file(f) else "dicom" if is_dicom(f) else None for f in files)
    kinds.pop(None, None)
    if not kinds:
        raise DataError(f"data.source {str(root)!r}: no images (PNG, JPEG, TIFF, BMP), NIfTI volumes or DICOM files found")
    if len(kinds) > 1:
        found = ", ".join(f"{n} {KIND_NOUNS[k]}" for k, n in kinds.most_common())
        raise DataError(f"data.source {str(root)!r}: mixes {found}; set data.format to the one to read (images, nifti or dicom)")
    return next(iter(kinds))


def parallel_map(function, items: list, workers: int, desc: str) -> list:
    """``[function(x) for x in items]`` in ``workers`` processes (0 = one per CPU core), with progress.

    Forked workers: they inherit the imported modules, so start-up is milliseconds, not seconds.
    """
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(items) < 64:
        return [function(item) for item in tqdm(items, desc=desc, unit="item", mininterval=2.0, disable=None)]
    with multiprocessing.get_context("fork").Pool(min(workers, len(items)), initializer=_default_sigterm) as pool:
        chunk = max(1, min(64, len(items) // (workers * 8)))
        return list(tqdm(pool.imap(function, items, chunksize=chunk), total=len(items), desc=desc, unit="item", mininterval=2.0, disable=None))


def _default_sigterm() -> None:
    """Workers die quietly on SIGTERM (the pool's shutdown) instead of inheriting the stage's handler."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _class_of(path: Path, root: Path, labelled: bool) -> str | None:
    """Class folder name (first path component below the root), UNLABELLED, or None when a file
    lies directly in the root of a labelled layout."""
    if not labelled:
        return UNLABELLED
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def ingest(cfg: DataConfig) -> Ingested:
    """Read ``cfg.source`` (a folder) into a Cohort; raise DataError with one line for what a user must fix."""
    root = Path(cfg.source).expanduser()
    if not root.exists():
        raise DataError(f"data.source: folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data.source: {str(root)!r} is a file; point it at the folder that holds the data")
    files = visible_files(root)
    if not files:
        raise DataError(f"data.source: folder {str(root)!r} is empty")
    kind = detect_format(root, files) if cfg.format == "auto" else cfg.format
    accepts = {"images": is_image_file, "nifti": is_nifti, "dicom": is_dicom}[kind]
    wanted = [f for f in files if accepts(f)]
    skipped = [(str(f), "unsupported_file") for f in files if not accepts(f)]
    if not wanted:
        raise DataError(f"data.source {str(root)!r}: no {KIND_NOUNS[kind]} found (data.format: {cfg.format})")

    # Units of work: one per image file or volume, one per DICOM series (files of one folder).
    if kind == "dicom":
        by_folder: dict[Path, list[Path]] = defaultdict(list)
        for f in wanted:
            by_folder[f.parent].append(f)
        labelled = any(len(folder.relative_to(root).parts) >= 2 for folder in by_folder)
        units = [(folder, files_) for folder, files_ in sorted(by_folder.items())]
        unit_class = [_class_of(folder / "file", root, labelled) for folder, _ in units]
    else:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        labelled = bool(class_dirs)
        for folder in class_dirs:
            if not any(f.is_relative_to(folder) for f in wanted):
                raise DataError(f"data.source: class folder {str(folder)!r} contains no {KIND_NOUNS[kind]}")
        units = wanted
        unit_class = [_class_of(f, root, labelled) for f in wanted]
    for unit, cls in zip(units, unit_class):
        if cls is None:
            skipped.extend((str(f), "outside_class_folder") for f in (unit[1] if kind == "dicom" else [unit]))
    kept = [(unit, cls) for unit, cls in zip(units, unit_class) if cls is not None]
    class_names = sorted({cls for _, cls in kept})

    if kind in ("images", "nifti"):
        subjects = subject_ids([subject_key(unit, root) for unit, _ in kept], cfg.subject_pattern)  # before decoding: fail fast
        decode = decode_image if kind == "images" else functools.partial(decode_nifti, cfg=cfg.volume)
        results = parallel_map(functools.partial(decode, size=cfg.image_size), [unit for unit, _ in kept], cfg.workers, kind)
        for result, subject in zip(results, subjects):
            result.subject = subject
    else:
        series = [(files_, folder.relative_to(root).as_posix() if folder != root else folder.name) for (folder, files_), _ in kept]
        results = parallel_map(functools.partial(_decode_series, cfg=cfg, size=cfg.image_size), series, cfg.workers, "series")
        decoded = [result for result in results if result.images is not None]
        from_patient_ids = bool(decoded) and all(result.patient_id for result in decoded)
        for result, subject in zip(decoded, subject_ids([result.subject for result in decoded], cfg.subject_pattern, from_patient_ids)):
            result.subject = subject

    images, labels, subjects_out, upsampled, pixel_sizes = [], [], [], 0, []
    for result, (_, cls) in zip(results, kept):
        skipped.extend(result.skipped)
        upsampled += result.upsampled
        if result.images is None:
            continue
        images.append(result.images)
        if result.pixel_mm is not None:
            pixel_sizes.append(result.pixel_mm)
        labels.append(np.full(len(result.images), class_names.index(cls), dtype=np.int64))
        subjects_out.append(np.full(len(result.images), result.subject))
    relative = [(_relative(path, root), reason) for path, reason in skipped]
    if not images:
        examples = ", ".join(f"{p} ({r})" for p, r in relative[:3])
        raise DataError(f"data.source {str(root)!r}: none of {len(files)} files gave a usable slice, e.g. {examples}")
    cohort = Cohort(np.concatenate(images), np.concatenate(labels), np.concatenate(subjects_out), class_names)
    pixel_mm = round(float(np.median(pixel_sizes)), 4) if pixel_sizes else None
    return Ingested(cohort, kind, len(files), relative, upsampled, pixel_mm)


def _decode_series(item: tuple[list[Path], str], cfg: DataConfig, size: int) -> Decoded:
    files, name = item
    return decode_dicom_series(files, name, cfg.volume, size)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def check_bad_fraction(ingested: Ingested, max_bad_fraction: float, root: str, report: Path) -> None:
    """Fail when more than ``data.max_bad_fraction`` of the files could not be used, naming examples."""
    n_bad, n = len(ingested.skipped), ingested.n_files
    if n_bad / max(1, n) <= max_bad_fraction:
        return
    examples = ", ".join(f"{p} ({r})" for p, r in sorted(ingested.skipped)[:3])
    raise DataError(f"data.source {root!r}: {n_bad} of {n} files unusable ({n_bad / n:.1%} > data.max_bad_fraction "
                    f"{max_bad_fraction}), e.g. {examples}; full list in {report}")

