"""The filtered export: draw K× the requested synthetic slices of each class and keep those that a
held-out ensemble of real-trained classifiers assigns to their class most confidently, class by
class (so the class balance is kept).

The ensemble is its own: ``members`` slice classifiers (``classifiers.slice.SliceClassifier``, the recipe of
``evaluate.classifier``), member *i* trained on every fold of the training subjects but fold *i*
(subject-level, class-stratified folds) with seeds that no evaluation classifier uses, and checked
on the fold it did not see. A slice's score is the ensemble's mean softmax probability of the class
it was drawn for. The independent judge (``brainsynth.classifiers.judge``) never sees any of it.

What the filter can and cannot do: it keeps the samples the real-trained CNN family reads as their
class, so it raises GAN-test by that family partly by construction; it cannot add a grade the
generator does not draw, and a sample can satisfy the CNNs with texture rather than anatomy. The
honest figure is the independent judge's TSTR with and without it (evaluate reports both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from brainsynth.classifiers.slice import SliceClassifier, budget, class_scores, train_classifier
from brainsynth.inference import predict_classes, unit_batches

SEED_OFFSET = 700_000  # the ensemble's seeds: seed + SEED_OFFSET + member; evaluation classifiers use seed + 100 × i (i < 20)


@dataclass
class FilterEnsemble:
    """``members`` real-trained classifiers; ``held_out`` each one's balanced accuracy on the fold of
    training subjects it did not see; ``seeds`` theirs; ``n_subjects`` the subjects of each held-out fold."""

    members: list[SliceClassifier]
    held_out: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    n_subjects: list[int] = field(default_factory=list)
    epochs: int = 0

    @torch.no_grad()
    def scores(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 images, (N,) intended classes → (N,) float64: the members' mean softmax
        probability of each image's intended class (0..1)."""
        labels = np.asarray(labels, dtype=np.int64)
        total = np.zeros(len(images))
        for member in self.members:
            device = next(member.parameters()).device
            member.eval()
            probabilities = []
            for _, x in unit_batches(images, device):
                probabilities.append(member(x).float().softmax(dim=1).cpu())
            if probabilities:
                total += torch.cat(probabilities).numpy()[np.arange(len(images)), labels]
        return total / max(len(self.members), 1)

    def describe(self) -> dict:
        """What the manifest and the metrics record of the ensemble."""
        return {"members": len(self.members), "seeds": self.seeds, "epochs": self.epochs, "held_out_subjects": self.n_subjects,
                "held_out_balanced_accuracy": [round(a, 4) for a in self.held_out]}


def most_folds(labels: np.ndarray, subjects: np.ndarray) -> int:
    """The most subject-level folds every class can fill: the fewest subjects of any class."""
    return min(len(np.unique(subjects[labels == k])) for k in np.unique(labels))


def train_ensemble(images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, n_classes: int, members: int, epochs: int, seed: int,
                   device: torch.device, recipe) -> FilterEnsemble:
    """The held-out ensemble on the training split: (N, S, S) uint8 images, (N,) labels, (N,) subject
    ids. Folds are subject-level and class-stratified (``StratifiedGroupKFold``, ``members`` folds);
    member i is trained on all folds but i for ``epochs`` passes (at least ``recipe.min_steps``
    updates, ``downstream.budget``). ValueError naming the count when
    there are fewer subjects of a class than folds."""
    if most_folds(labels, subjects) < members:
        raise ValueError(f"filter.members = {members}: the training split has {most_folds(labels, subjects)} subjects of a class, "
                         f"fewer than the folds the held-out ensemble needs")
    folds = StratifiedGroupKFold(n_splits=members, shuffle=True, random_state=seed + SEED_OFFSET)
    ensemble = FilterEnsemble(members=[], epochs=epochs)
    for i, (train_index, held_index) in enumerate(folds.split(images, labels, groups=subjects)):
        member_seed = seed + SEED_OFFSET + i
        member = train_classifier(images[train_index], labels[train_index], n_classes, epochs, member_seed, device, recipe,
                                  steps=budget(len(train_index), epochs, recipe))
        ensemble.members.append(member)
        ensemble.seeds.append(member_seed)
        ensemble.n_subjects.append(int(len(np.unique(subjects[held_index]))))
        ensemble.held_out.append(class_scores(predict_classes(member, images[held_index]), labels[held_index])["balanced_accuracy"])
    return ensemble


def draw_and_keep(sample: Callable[[np.ndarray, int], np.ndarray], ensemble: FilterEnsemble, label: int, n_drawn: int, n_kept: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_drawn`` samples of class ``label`` (``sample(labels, seed)`` → (N, S, S) uint8), the
    ``n_kept`` with the highest ensemble scores, in draw order. Returns (images, their scores,
    their indices in the draw)."""
    drawn = sample(np.full(n_drawn, label, dtype=np.int64), seed)
    scores = ensemble.scores(drawn, np.full(n_drawn, label))
    kept = np.sort(np.argsort(-scores, kind="stable")[:n_kept])
    return drawn[kept], scores[kept], kept


def filtered_sampler(sample: Callable[[np.ndarray, int], np.ndarray], ensemble: FilterEnsemble,
                     oversample: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """A sampler like ``sample`` (labels, seed → (N, S, S) uint8 images of those classes) whose images
    are, class by class, the best ``1/oversample`` of ``oversample`` × as many draws: the same
    number of slices per class as the unfiltered sampler gives, so utility compares like with like."""

    def filtered(labels: np.ndarray, seed: int) -> np.ndarray:
        labels = np.asarray(labels)
        out = None
        for k in np.unique(labels):
            slots = np.flatnonzero(labels == k)
            images, _, _ = draw_and_keep(sample, ensemble, int(k), oversample * len(slots), len(slots), seed + 1009 * (int(k) + 1))
            if out is None:
                out = np.empty((len(labels), *images.shape[1:]), images.dtype)
            out[slots] = images
        return out if out is not None else sample(labels, seed)

    return filtered


@dataclass
class Selection:
    """A filtered export's settings: ``oversample`` draws per requested slice, ``keep`` the share of
    the draws kept per class (0 = 1/oversample), the ensemble and what it was trained on (for the manifest)."""

    ensemble: FilterEnsemble
    oversample: int
    keep: float = 0.0
    trained_on: dict = field(default_factory=dict)  # e.g. {"data": path, "data_digest": ..., "split": "train", "seed": ...}

    def counts(self, n_per_class: int) -> tuple[int, int]:
        """(drawn, kept) per class for ``n_per_class`` requested slices."""
        drawn = self.oversample * n_per_class
        return drawn, (n_per_class if not self.keep else max(1, round(self.keep * drawn)))

    def describe(self, n_per_class: int) -> dict:
        drawn, kept = self.counts(n_per_class)
        return {"oversample": self.oversample, "keep": self.keep or 1 / self.oversample, "drawn_per_class": drawn, "kept_per_class": kept,
                "score": "mean softmax probability of the drawn-for class over the ensemble's members",
                "ensemble": {**self.ensemble.describe(), **self.trained_on}}


def ensemble_from_prepared(source, n_members: int, epochs: int, seed: int, device: torch.device, recipe) -> tuple[FilterEnsemble, dict]:
    """The held-out ensemble trained on the training split of the prepared data at ``source``
    (``dvc repro prepare``'s ``data/prepared``), and what the manifest records of that data.
    One-line ValueError when ``source`` is no prepared dataset or has too few subjects."""
    from pathlib import Path

    from brainsynth.data import prepared
    from brainsynth.files import digest

    try:
        data = prepared.load(Path(source))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"--filter-data {str(source)!r}: not a prepared dataset (run `dvc repro prepare`; {str(err).splitlines()[0]})") from None
    mask = data.splits == "train"
    ensemble = train_ensemble(data.images[mask], data.labels[mask], data.subjects[mask], len(data.class_names), n_members, epochs, seed,
                              device, recipe)
    return ensemble, {"data": str(source), "data_digest": digest(Path(source)), "split": "train", "class_names": data.class_names}
