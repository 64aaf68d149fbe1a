"""The prepared dataset on disk (``data/prepared/``) and in memory.

``dataset.npz`` holds ``images`` (N, H, W) uint8, ``labels`` (N,) int64, ``subjects`` (N,) str and
``splits`` (N,) str; ``meta.json`` holds class names, counts and the MLflow run that made it.
"""

from __future__ import annotations

import json
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


def save(directory: Path, images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, splits: np.ndarray, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(directory / DATASET_FILE, images=images, labels=labels, subjects=subjects, splits=splits)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load(directory: str | Path) -> PreparedData:
    directory = Path(directory)
    path = directory / DATASET_FILE
    if not path.is_file():
        raise DataError(f"{path}: prepared dataset not found (run the prepare stage: dvc repro prepare)")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in ("images", "labels", "subjects", "splits")}
    meta = json.loads((directory / META_FILE).read_text())
    return PreparedData(**arrays, class_names=list(meta["class_names"]), meta=meta)
