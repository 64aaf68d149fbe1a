"""Downstream utility of synthetic data, measured the way the field does (Ravuri & Vinyals 2019,
"Classification Accuracy Score"; Shmelkov et al. 2018, "How good is my GAN?").

A slice classifier is trained, for each of several seeds, on

* ``trtr``: real training slices only,
* ``tstr``: synthetic slices only (the real training set's class mix and count),
* ``augmented``: real + synthetic slices (``synthetic_per_real`` × as many, spread evenly over the
  classes, which is how a data-poor study would use them: to fill its rare classes),

all trained for the same number of updates (``epochs`` passes over the real slices, at least
``recipe.min_steps``), so that a gain comes from the data, not from longer training, and each
is tested on the real test split. Scores are **balanced accuracy** (mean per-class recall)
and macro-F1, because plain accuracy rewards a majority-class guesser on imbalanced cohorts.
``augment_gain`` is augmented − trtr balanced accuracy per seed (mean and std), ``tstr_ratio`` is
tstr / trtr (means).

The real-trained classifier also grades the generator the other way round ("GAN-test"): the
share of samples it assigns to the class they were drawn for, and the same for reconstructions.
Its penultimate layer is the in-domain feature space of ``metrics.frechet_distance`` and
``metrics.precision_recall`` (no downloaded weights).
The classifier is ``nets.SliceClassifier`` (BatchNorm, dropout) trained with AdamW and a one-cycle
schedule (figures in benchmarks/README.md); its ``recipe`` is params.yaml's ``evaluate.classifier``
(width, dropout, batch_size, lr, min_steps — any object with those attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from brainsynth.inference import predict_classes, to_unit, unit_batches
from brainsynth.nets import SliceClassifier

KINDS = ("trtr", "tstr", "augmented")


def new_classifier(n_classes: int, recipe) -> SliceClassifier:
    """The downstream classifier, untrained (also what a cached state dict is loaded into)."""
    return SliceClassifier(n_classes, width=recipe.width, norm="batch", dropout=recipe.dropout)


def budget(n_images: int, epochs: int, recipe) -> int:
    """Updates of ``epochs`` passes over ``n_images``, at least ``recipe.min_steps``: with a few dozen
    updates BatchNorm's running statistics have not settled and the classifier predicts one class in
    evaluation mode (balanced accuracy exactly 1/K at data.train_fraction 0.1 before this floor)."""
    return max(epochs * ((n_images + recipe.batch_size - 1) // recipe.batch_size), recipe.min_steps)


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, epochs: int, seed: int, device: torch.device,
                     recipe, steps: int | None = None) -> SliceClassifier:
    """SliceClassifier trained on (train_x, train_y): uint8 (N, S, S) images, (N,) int labels, for
    ``epochs`` passes, or exactly ``steps`` updates when given (to compare training sets of different
    sizes at an equal optimisation budget)."""
    batch, lr = recipe.batch_size, recipe.lr
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = new_classifier(n_classes, recipe).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    total = max(1, steps if steps is not None else epochs * ((len(train_x) + batch - 1) // batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3 * lr, total_steps=total)
    images = to_unit(torch.from_numpy(np.ascontiguousarray(train_x)).unsqueeze(1)).to(device)
    labels = torch.from_numpy(train_y.astype(np.int64)).to(device)
    model.train()
    done = 0
    while done < total:
        order = torch.from_numpy(rng.permutation(len(images))).to(device)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            if done == total:
                break
            done += 1
            x = images[idx]
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)  # the generator saw flips too
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of (N, S, S) uint8 images the (trained) classifier assigns to their label."""
    if len(images) == 0:
        return 0.0
    return float((predict_classes(model, images) == np.asarray(labels)).mean())


def class_scores(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Balanced accuracy (mean recall over the classes present in ``labels``) and macro-F1 over them."""
    present = np.unique(labels)
    return {"balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0))}


def per_class_recall(predicted: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """{class name: share of that class's images predicted as it} for the classes present."""
    return {name: float((predicted[labels == k] == k).mean()) for k, name in enumerate(class_names) if (labels == k).any()}


@torch.no_grad()
def penultimate_features(model: SliceClassifier, images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 → (N, F) float64: the classifier's globally pooled last feature map, the
    in-domain embedding used for Fréchet distance and precision/recall."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model.features(x).mean(dim=(2, 3)).double().cpu() for _, x in unit_batches(images, device)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def balanced_synthetic_labels(n: int, n_classes: int, seed: int) -> np.ndarray:
    """``n`` labels spread as evenly as possible over the classes (the remainder to random classes)."""
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    extra = np.random.default_rng(seed).choice(n_classes, n - len(labels), replace=False) if n % n_classes else np.zeros(0, int)
    return np.sort(np.concatenate([labels, extra]).astype(np.int64))


@dataclass
class UtilityResult:
    """Per-seed scores of every classifier kind and the first seed's real-trained classifier."""

    scores: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {k: [] for k in KINDS})
    reference: SliceClassifier | None = None  # trtr classifier of the first seed

    def summary(self) -> dict[str, float]:
        """``{kind}_{score}_mean/_std``, ``augment_gain_mean/_std`` and ``tstr_ratio`` (balanced accuracy)."""
        out: dict[str, float] = {}
        for kind, runs in self.scores.items():
            if not runs:
                continue
            for score in runs[0]:
                values = np.array([r[score] for r in runs])
                out[f"{kind}_{score}_mean"] = float(values.mean())
                out[f"{kind}_{score}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        if self.scores["augmented"]:
            gain = np.array([a["balanced_accuracy"] - r["balanced_accuracy"] for a, r in zip(self.scores["augmented"], self.scores["trtr"])])
            out["augment_gain_mean"] = float(gain.mean())
            out["augment_gain_std"] = float(gain.std(ddof=1)) if len(gain) > 1 else 0.0
        if self.scores["tstr"] and out.get("trtr_balanced_accuracy_mean", 0) > 0:
            out["tstr_ratio"] = out["tstr_balanced_accuracy_mean"] / out["trtr_balanced_accuracy_mean"]
        return out


def utility(real_x: np.ndarray, real_y: np.ndarray, sample: Callable[[np.ndarray, int], np.ndarray], test_x: np.ndarray, test_y: np.ndarray,
            n_classes: int, epochs: int, seeds: list[int], synthetic_per_real: float, device: torch.device, recipe,
            on_progress: Callable[[str], None] | None = None) -> UtilityResult:
    """Train and test every classifier kind once per seed (see the module docstring).

    ``sample(labels, seed)`` → (N, S, S) uint8 synthetic images of those classes. With
    ``synthetic_per_real`` = 0 the augmented classifier is skipped.
    """
    result = UtilityResult()
    real_steps = budget(len(real_x), epochs, recipe)
    for index, seed in enumerate(seeds):
        synthetic_x = sample(real_y, seed + 1000)
        sets = {"trtr": (real_x, real_y), "tstr": (synthetic_x, real_y)}
        n_extra = int(round(synthetic_per_real * len(real_x)))
        if n_extra > 0:
            extra_y = balanced_synthetic_labels(n_extra, n_classes, seed)
            extra_x = sample(extra_y, seed + 2000)
            sets["augmented"] = (np.concatenate([real_x, extra_x]), np.concatenate([real_y, extra_y]))
        for kind, (x, y) in sets.items():
            if on_progress:
                on_progress(f"utility classifier {kind}, seed {index + 1}/{len(seeds)}")
            classifier = train_classifier(x, y, n_classes, epochs, seed, device, recipe, steps=real_steps)
            result.scores[kind].append(class_scores(predict_classes(classifier, test_x), test_y))
            if kind == "trtr" and result.reference is None:
                result.reference = classifier
    return result
