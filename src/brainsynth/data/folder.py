"""2D image files (PNG, JPEG, TIFF, BMP; 8/16-bit; grayscale or RGB) → uint8 squares.

The per-file decoder is what ``ingest`` runs in worker processes, so it must be cheap: JPEGs are
decoded in libjpeg's DCT-domain draft mode straight to grayscale at the smallest scale that is
still at least the target size (the ingestion figures are in experiments/results/2026-12-06-lab-notebook.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainsynth.data.errors import DataError
from brainsynth.data.imaging import fit_square, fitted_size, to_gray

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass
class Decoded:
    """What one unit of work (a file, a volume, a DICOM series) gave: its slices or why it gave none."""

    images: np.ndarray | None = None  # (k, size, size) uint8
    subject: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    upsampled: int = 0  # slices whose source was smaller than the target size
    pixel_mm: float | None = None  # in-plane size of an output pixel (volumes: from the voxel spacing; images: unknown)
    patient_id: bool = False  # DICOM: ``subject`` is the series' PatientID (not its folder's path)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _failure_reason(err: Exception) -> str:
    text = str(err).lower()
    return "truncated" if "truncated" in text or "broken data stream" in text or "premature end" in text else "unreadable"


def decode_image(path: Path, size: int) -> Decoded:
    """One image file → Decoded with a single (1, size, size) slice, or the reason it was skipped."""
    try:
        if path.stat().st_size == 0:
            return Decoded(skipped=[(str(path), "empty_file")])
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "JPEG":
                image.draft("L", fitted_size(width, height, size))
            image.load()
            square = fit_square(to_gray(image), size, physical=(width, height))
    except UnidentifiedImageError:
        return Decoded(skipped=[(str(path), "unreadable")])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return Decoded(skipped=[(str(path), _failure_reason(err))])
    return Decoded(images=square[None], upsampled=int(max(width, height) < size))


# ``data.subject_pattern: auto``: the naming conventions recognised, tried in this order; the first
# that finds a person in every key is used. Group 1 is the person, so sessions of one person
# (OAS1_0001_MR1/_MR2, sub-01/ses-1, ses-2) stay together.
CONVENTIONS = (
    ("OASIS", r"(OAS\d_\d+)"),
    ("ADNI", r"(\d{3}_S_\d{4})"),
    ("BIDS", r"(?:^|/)(sub-[A-Za-z0-9]+)"),
)
AUTO = "auto"


def subject_ids(keys: list[str], subject_pattern: str, patient_ids: bool = False) -> list[str]:
    """The person each unit of data belongs to, from ``data.subject_pattern`` (group 1, else the
    whole match) searched in its key: the path below ``data.source`` (images, NIfTI) or the DICOM
    PatientID (else the series folder's path); ``patient_ids``: every key is a DICOM PatientID.

    ``auto``: the first of ``CONVENTIONS`` that matches every key, else (``patient_ids``) the
    PatientID itself; the log names the convention and the number of persons. An empty pattern
    makes the key itself the subject: the path, never the bare file name, so ``AD/001.png`` and
    ``CN/001.png`` stay two subjects. A pattern that misses any key is an error: guessing would
    let slices of one person fall into different splits.
    """
    if subject_pattern == AUTO:
        return _auto_subject_ids(keys, patient_ids)
    if not subject_pattern:
        return list(keys)
    ids, misses = _match(keys, subject_pattern)
    if misses:
        raise DataError(
            f"data.subject_pattern '{subject_pattern}' does not match {misses[0]!r} ({len(misses)} of {len(keys)}): "
            "fix the pattern (group 1 = the person, e.g. '(sub-[^_/]+)' for BIDS), set it to 'auto' for the common "
            "conventions or to '' to make each file, volume or series its own subject"
        )
    return ids


def _match(keys: list[str], subject_pattern: str) -> tuple[list[str], list[str]]:
    pattern = re.compile(subject_pattern)
    ids, misses = [], []
    for key in keys:
        match = pattern.search(key)
        if match is None:
            misses.append(key)
            continue
        ids.append(match.group(1) if match.groups() else match.group(0))
    return ids, misses


def _auto_subject_ids(keys: list[str], patient_ids: bool) -> list[str]:
    import logging

    log = logging.getLogger("brainsynth.data")
    closest = None
    for name, pattern in CONVENTIONS:
        ids, misses = _match(keys, pattern)
        if not misses:
            log.info("data.subject_pattern auto: %s names (%s): %d persons in %d files, volumes or series", name, pattern, len(set(ids)), len(keys))
            return ids
        if closest is None or len(misses) < len(closest[1]):
            closest = (name, misses)
    if patient_ids and keys:
        log.info("data.subject_pattern auto: DICOM PatientID: %d persons in %d series", len(set(keys)), len(keys))
        return list(keys)
    name, misses = closest if closest else ("none", list(keys))
    raise DataError(
        f"data.subject_pattern auto: no convention (OASIS OAS1_0001, ADNI 002_S_0295, BIDS sub-<label>, DICOM PatientID) names the "
        f"person in every file; e.g. {misses[0]!r} ({len(misses)} of {len(keys)} not {name}): set data.subject_pattern to a regex "
        "(group 1 = the person) or to '' to make each file, volume or series its own subject"
    )


def subject_key(path: Path, root: Path) -> str:
    """A file's path below ``root``: ``AD/OAS1_0001_MR1_100.jpg``."""
    return path.relative_to(root).as_posix()
