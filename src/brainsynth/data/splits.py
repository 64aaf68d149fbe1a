"""Subject-level, class-stratified train/val/test splits."""

from __future__ import annotations

import numpy as np

from brainsynth.data.errors import DataError

SPLITS = ("train", "val", "test")


def split_by_subject(subjects: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Assign every slice to 'train', 'val' or 'test' so that a subject's slices share one split.

    Subjects are stratified by their most frequent label; every class with at least three subjects
    gets at least one test subject (and one val subject when ``val_fraction`` > 0).
    Returns an array of split names, one per slice.
    """
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(subjects, return_inverse=True)
    subject_label = np.array([np.bincount(labels[inverse == i]).argmax() for i in range(len(unique))])
    subject_split = np.empty(len(unique), dtype=object)
    for label in np.unique(subject_label):
        members = rng.permutation(np.flatnonzero(subject_label == label))
        n = len(members)
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_val = max(1, round(val_fraction * n)) if n >= 3 and val_fraction > 0 else 0
        subject_split[members[:n_test]] = "test"
        subject_split[members[n_test : n_test + n_val]] = "val"
        subject_split[members[n_test + n_val :]] = "train"
    return subject_split[inverse].astype(str)


def check_subjects_isolated(subjects: np.ndarray, splits: np.ndarray) -> None:
    """Refuse a split in which one person's slices sit in more than one of train/val/test: a
    classifier or generator tested on a person it was trained on scores too well."""
    pairs = np.unique(np.stack([subjects.astype(str), splits.astype(str)]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    shared = ids[counts > 1]
    if len(shared):
        where = sorted(pairs[1][pairs[0] == shared[0]])
        raise DataError(f"subject {str(shared[0])!r} appears in splits {', '.join(map(str, where))} ({len(shared)} such subjects): "
                        "slices of one person must stay in one split (check data.subject_pattern)")


def subjects_in_several_classes(subjects: np.ndarray, labels: np.ndarray) -> list[str]:
    """Persons whose slices carry more than one class (a diagnosis that changed between visits,
    or a subject pattern that merges different people)."""
    pairs = np.unique(np.stack([subjects.astype(str), labels.astype(str)]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    return [str(s) for s in ids[counts > 1]]


def subsample_train_subjects(subjects: np.ndarray, labels: np.ndarray, splits: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Scarcity: keep ``fraction`` of each class's training *subjects* (at least one per class,
    seeded); the slices of the others get the split name 'unused'. Val and test are untouched.

    Subjects are grouped by their most frequent label, as in ``split_by_subject``.
    """
    if fraction >= 1.0:
        return splits
    rng = np.random.default_rng([seed, 1])  # its own stream: the val/test draw stays as it was
    out = splits.astype(object)  # a fixed-width str array would cut 'unused' to the longest split name
    train = splits == "train"
    unique, inverse = np.unique(subjects[train], return_inverse=True)
    subject_label = np.array([np.bincount(labels[train][inverse == i]).argmax() for i in range(len(unique))])
    dropped = []
    for label in np.unique(subject_label):
        members = rng.permutation(np.flatnonzero(subject_label == label))
        keep = max(1, round(fraction * len(members)))
        dropped.extend(unique[members[keep:]])
    out[train & np.isin(subjects, dropped)] = "unused"
    return out.astype(str)
