"""The prepared dataset on disk (``data/prepared/``) and in memory.

``dataset.npz`` holds ``images`` (N, H, W) uint8, ``labels`` (N,) int64, ``subjects`` (N,) str and
``splits`` (N,) str; ``meta.json`` holds class names and counts. Both are byte-identical for identical
data (no run ids, no timestamps), so DVC sees an unchanged output when prepare reruns on the same
input and does not rerun what depends on it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainsynth.data.errors import DataError

DATASET_FILE = "dataset.npz"
META_FILE = "meta.json"


@dataclass(frozen=True)
class PreparedData:
    images: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    splits: np.ndarray
    class_names: list[str]
    meta: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of one split."""
        mask = self.splits == name
        return self.images[mask], self.labels[mask]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def pixel_mm(self) -> float | None:
        """In-plane size of a pixel in mm, or None when the source did not say (2-D images)."""
        return self.meta.get("pixel_mm")


def save(directory: Path, images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, splits: np.ndarray, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _savez_reproducible(directory / DATASET_FILE, images=images, labels=labels, subjects=subjects.astype(str), splits=splits.astype(str))
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _savez_reproducible(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` without its one non-reproducible byte source: numpy stamps each
    zip member with the current time, so identical arrays gave a new file hash on every run
    (and DVC reran every downstream stage). Same format; ``np.load`` reads it."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)


def load(directory: str | Path) -> PreparedData:
    directory = Path(directory)
    path = directory / DATASET_FILE
    if not path.is_file():
        raise DataError(f"{path}: prepared dataset not found (run the prepare stage: dvc repro prepare)")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in ("images", "labels", "subjects", "splits")}
    meta = json.loads((directory / META_FILE).read_text())
    return PreparedData(**arrays, class_names=list(meta["class_names"]), meta=meta)
