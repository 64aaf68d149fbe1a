"""Figures: labelled image grids (matplotlib) written as PNG files. Images are uint8 (N, S, S)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def labelled_grid(rows: list[np.ndarray], row_labels: list[str], path: Path, title: str = "", col_labels: list[str] | None = None) -> Path:
    """One row of images per entry of ``rows`` (each (n_i, S, S)), labelled on the left."""
    n_cols = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.1 * n_cols + 1.2, 1.15 * len(rows) + 0.5), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_grid(sample, class_names: list[str], per_class: int, seed: int, path: Path, title: str = "") -> Path:
    """Samples, one row per class: ``sample(labels, seed)`` → (N, S, S) uint8 (a model's or
    trainer's ``sample``), called once with ``per_class`` labels of each class."""
    names = class_names or ["unlabelled"]
    images = sample(np.repeat(np.arange(len(names)), per_class), seed)
    rows = [images[k * per_class : (k + 1) * per_class] for k in range(len(names))]
    return labelled_grid(rows, names, path, title=title)


def class_rows(images: np.ndarray, labels: np.ndarray, class_names: list[str], per_row: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[str]]:
    """Pick up to ``per_row`` random images of each class."""
    rows, names = [], []
    for k, name in enumerate(class_names):
        members = np.flatnonzero(labels == k)
        if len(members) == 0:
            continue
        pick = rng.choice(members, size=min(per_row, len(members)), replace=False)
        rows.append(images[np.sort(pick)])
        names.append(name)
    return rows, names


def training_curves(history: list[dict[str, float]], val_history: list[dict], path: Path) -> Path:
    """Per-epoch training losses (left) and validation scores (right) as one figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = np.arange(1, len(history) + 1)
    for key in (history[0] if history else {}):
        values = [row[key] for row in history]
        if any(v != 0 for v in values):
            left.plot(epochs, values, label=key)
    left.set_xlabel("epoch")
    left.set_title("training losses (epoch means)")
    left.legend(fontsize=7)
    for key in ("val_objective", "val_swd", "val_recon_mae"):
        if val_history and key in val_history[0]:
            right.plot([row["epoch"] for row in val_history], [row[key] for row in val_history], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_title("validation (lower is better)")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
