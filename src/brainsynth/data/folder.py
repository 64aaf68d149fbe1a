"""Ingest a folder of 2D images with one subfolder per class (e.g. the Kaggle OASIS layout).

``Data/Non Demented/OAS1_0001_MR1_mpr-1_100.jpg`` → class ``Non Demented``, subject ``OAS1_0001_MR1``.
A folder without class subfolders is read as a single unlabelled class.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from brainsynth.data.embedded import Cohort

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class DataError(ValueError):
    """A problem with the user's data; its message is one line naming the path."""


def to_square_uint8(image: Image.Image, size: int) -> np.ndarray:
    """Grayscale uint8 (size, size): 16-bit scaled by its own range, RGB averaged, aspect kept by padding."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8))
    image = image.convert("L")
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized)
    return canvas


def read_image_folder(root: Path, size: int, subject_pattern: str) -> Cohort:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.source: folder {str(root)!r} does not exist")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        groups = [(d.name, sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)) for d in class_dirs]
    else:
        groups = [("unlabelled", sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))]
    for name, files in groups:
        if not files:
            raise DataError(f"data.source: class folder {str(root / name)!r} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    pattern = re.compile(subject_pattern)
    images, labels, subjects = [], [], []
    for label, (name, files) in enumerate(groups):
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(to_square_uint8(image, size))
            except (OSError, ValueError) as err:
                raise DataError(f"{file}: cannot be read as an image ({err})") from None
            match = pattern.search(file.stem)
            subjects.append(match.group(1) if match and match.groups() else match.group(0) if match else file.stem)
            labels.append(label)
    return Cohort(np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(subjects), [name for name, _ in groups])
