"""Figures: labelled image grids (matplotlib) written as PNG files. Images are uint8 (N, S, S)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def labelled_grid(rows: list[np.ndarray], row_labels: list[str], path: Path, title: str = "", col_labels: list[str] | None = None,
                  heat_rows: tuple[int, ...] = ()) -> Path:
    """One row of images per entry of ``rows`` (each (n_i, S, S)), labelled on the left. Rows whose
    index is in ``heat_rows`` (e.g. |differences|) use a heat colour map, scaled to their own
    maximum, with a colour bar in grey levels."""
    n_cols = max((len(r) for r in rows), default=1)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.1 * n_cols + 1.2 + (0.6 if heat_rows else 0), 1.15 * len(rows) + 0.5),
                             squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        heat = r in heat_rows
        top = max(1, int(np.max(images))) if heat and len(images) else 255
        shown = None
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                shown = ax.imshow(images[c], cmap="inferno" if heat else "gray", vmin=0, vmax=top, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=8)
        if heat and shown is not None:
            bar = fig.colorbar(shown, ax=list(axes[r]), fraction=0.02, pad=0.01)
            bar.ax.tick_params(labelsize=7)
            bar.set_label("grey levels", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    if heat_rows:  # tight_layout cannot place a colour bar that spans a row
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path
    return _save(fig, path)


def spread_indices(labels: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices that take turns over the classes and, within a class, over different groups
    (subjects), at random slices: a row that shows the data's range, not one subject's stack."""
    picked: list[int] = []
    by_class = {k: rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)}
    used_groups: set = set()
    while len(picked) < n and any(len(v) for v in by_class.values()):
        for k in list(by_class):
            pool = by_class[k]
            if not len(pool) or len(picked) == n:
                continue
            fresh = [i for i in pool if groups[i] not in used_groups]
            choice = fresh[0] if fresh else pool[0]
            picked.append(int(choice))
            used_groups.add(groups[choice])
            by_class[k] = pool[pool != choice]
    return np.array(picked, dtype=int)


def intensity_histograms(real: np.ndarray, generated: np.ndarray, path: Path, title: str = "") -> Path:
    """Grey-level histograms of real and generated slices (all pixels; log counts), so contrast and
    tissue peaks (background, CSF, grey and white matter) can be compared at a glance."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    bins = np.arange(257) - 0.5
    for images, label, colour in ((real, "real (test)", "#4c72b0"), (generated, "generated", "#dd8452")):
        ax.hist(images.ravel(), bins=bins, density=True, histtype="step", linewidth=1.2, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xlabel("grey level")
    ax.set_ylabel("share of pixels")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


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




def training_curves(history: list[dict[str, float]], val_history: list[dict], path: Path,
                    panels: tuple[tuple[str, tuple[str, ...]], ...]) -> Path:
    """Per-epoch training losses in two ``panels`` of (title, loss names) — ``training.losses.curve_panels``:
    the adversarial terms (±10) would flatten the reconstruction and KL terms (≈ 0.1) on one axis —
    (series that stayed 0, i.e. disabled terms, are left out) and the validation scores, as one
    figure of three panels."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = np.arange(1, len(history) + 1)
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            values = [row.get(key, 0.0) for row in history]
            if any(v != 0 for v in values):
                ax.plot(epochs, values, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        if ax.lines:
            ax.legend(fontsize=7)
    right = axes[-1]
    for key in ("val_objective", "val_swd", "val_recon_mae"):
        if val_history and key in val_history[0]:
            right.plot([row["epoch"] for row in val_history], [row[key] for row in val_history], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_title("validation, every train.sample_every epochs (lower is better)", fontsize=9)
    if right.lines:
        right.legend(fontsize=7)
    return _save(fig, path)


UTILITY_LABELS = {"trtr": "real only\n(TRTR)", "tstr": "synthetic only\n(TSTR)", "pretrain": "synthetic, then\nreal (pretrain)",
                  "judge_trtr": "judge:\nreal only", "judge_tstr": "judge:\nsynthetic only",
                  "tstr_filtered": "filtered synth.\nonly", "judge_tstr_filtered": "judge: filtered\nsynth. only"}


def utility_bars(summary: dict[str, float], kinds: list[str], chance: float, path: Path, title: str = "") -> Path:
    """Balanced accuracy (mean ± std over seeds) on the real test split of the classifiers of
    ``kinds`` (real-only, synthetic-only, the uses of synthetic slices, the independent judge), with
    each mix's duplicate-real control as a hatched bar beside it, and the chance level."""
    bars = []
    for kind in kinds:
        if f"{kind}_balanced_accuracy_mean" not in summary:
            continue
        base = kind.removesuffix("_filtered")
        label = UTILITY_LABELS.get(kind, f"real +\n{base[3:]} % synth." if base.startswith("mix") else base)
        label += "\n(filtered)" if kind != base and kind not in UTILITY_LABELS else ""
        bars.append((kind, label, ""))
        if f"duplicate_{kind}_balanced_accuracy_mean" in summary:
            bars.append((f"duplicate_{kind}", f"real +\n{kind[3:]} % dupl.", "//"))
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(bars), 3.6))
    means = [summary[f"{k}_balanced_accuracy_mean"] for k, _, _ in bars]
    stds = [summary[f"{k}_balanced_accuracy_std"] for k, _, _ in bars]
    colours = ["#999999" if k.startswith("judge_") else "#4c72b0" if k == "trtr" else "#dd8452" if k == "tstr" else "#55a868" for k, _, _ in bars]
    ax.bar(range(len(bars)), means, yerr=stds, capsize=4, color=colours, hatch=None)
    for patch, (_, _, hatch) in zip(ax.patches, bars):
        patch.set_hatch(hatch)
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    for i, (m, s) in enumerate(zip(means, stds)):
        ax.text(i, m + s + 0.01, f"{m:.2f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(bars)), [label for _, label, _ in bars], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("balanced accuracy on real test slices")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "downstream utility", fontsize=9)
    return _save(fig, path)


def morphometry_figure(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], reference: dict[str, np.ndarray], path: Path,
                       title: str = "") -> Path:
    """Per class, the distributions of the CSF area fraction on real test slices, generated slices
    and real training slices (the real-vs-real reference), as overlaid histograms."""
    names = list(real)
    fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 2.8), squeeze=False)
    values = np.concatenate([v[np.isfinite(v)] for d in (real, generated, reference) for v in d.values()] or [np.zeros(1)])
    bins = np.linspace(0.0, max(float(np.percentile(values, 99.5)), 1e-3), 30)
    for ax, name in zip(axes[0], names):
        for data, label, colour in ((reference[name], "real train", "#999999"), (real[name], "real test", "#4c72b0"),
                                    (generated[name], "generated", "#dd8452")):
            ax.hist(data[np.isfinite(data)], bins=bins, density=True, histtype="step", linewidth=1.5, label=label, color=colour)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("CSF share of brain area", fontsize=8)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
