"""The independent judge: a second classifier family that no training, tuning or filtering path
ever sees, so a generator trained or filtered against the project's CNN (the grade-consistency
ensemble, the filter's ensemble, evaluation's classifiers) cannot raise its score by construction.

It shares nothing with them: no torch, no weights, no code path, no seed stream. It is a
gradient-boosted tree ensemble (scikit-learn's ``HistGradientBoostingClassifier``) on hand-made
anatomical features of each slice (``morph_features``):

* the grey-level histogram inside the brain mask (``evaluate.judge.bins`` bins of [0, 1]);
* the CSF share in concentric rings of ``evaluate.judge.ring_px`` pixels around the brain's centre
  (ventricles near the centre, sulci at the rim: where atrophy shows);
* the brain's area share of the slice and its CSF share.

On the embedded cohort it reads the grade of real test slices about as well as the CNN does
(balanced accuracy 0.77 vs 0.75, experiments/results/2026-12-06-lab-notebook.md), from anatomy only: it cannot be fooled by
pixel-level texture that a CNN's gradient would put there.

Images are (N, S, S) uint8; labels (N,) int.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from brainsynth.metrics import brain_masks

# The judge's random streams are offset from the project seed by this (an unrelated prime), so it
# never shares a seed with the CNN classifiers, whose seeds are seed + 100 i (+ 1000/2000 for sampling).
SEED_OFFSET = 7919


def morph_features(images: np.ndarray, bins: int, ring_px: int) -> np.ndarray:
    """(N, S, S) uint8 → (N, bins + rings + 2) float64 anatomical features (module docstring)."""
    brain, csf = brain_masks(images)
    size = images.shape[-1]
    n_rings = max(1, size // 2 // ring_px)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((len(images), bins + n_rings + 2))
    for i, (image, b, c) in enumerate(zip(images.astype(np.float64) / 255.0, brain, csf)):
        area = b.sum()
        if area == 0:
            continue
        out[i, :bins] = np.histogram(image[b], bins=bins, range=(0.0, 1.0))[0] / area
        radius = np.hypot(yy - yy[b].mean(), xx - xx[b].mean())
        ring = np.minimum((radius // ring_px).astype(int), n_rings - 1)
        inside = ring[b]
        ring_area = np.bincount(inside, minlength=n_rings)
        out[i, bins : bins + n_rings] = np.bincount(inside, weights=c[b], minlength=n_rings) / np.maximum(ring_area, 1)
        out[i, -2:] = area / image.size, c.sum() / area
    return out


class Judge:
    """The fitted judge: ``predict(images)`` → classes (N,)."""

    def __init__(self, recipe, seed: int):
        self.recipe = recipe
        self.model = HistGradientBoostingClassifier(max_iter=recipe.max_iter, learning_rate=recipe.learning_rate,
                                                    random_state=seed + SEED_OFFSET)

    def features(self, images: np.ndarray) -> np.ndarray:
        return morph_features(images, self.recipe.bins, self.recipe.ring_px)

    def fit(self, images: np.ndarray, labels: np.ndarray, features: np.ndarray | None = None) -> "Judge":
        """Fit on slices (or their precomputed ``features``). No mirror copies: every feature is
        left-right symmetric already (histogram, rings, areas)."""
        self.model.fit(self.features(images) if features is None else features, labels)
        return self

    def predict(self, images: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        return self.model.predict(self.features(images) if features is None else features)


def train_judge(images: np.ndarray, labels: np.ndarray, seed: int, recipe) -> Judge:
    """The judge fitted on (images, labels); ``recipe``: params.yaml's ``evaluate.judge``."""
    return Judge(recipe, seed).fit(images, labels)
