"""Downstream utility of synthetic data, measured the way the field does (Ravuri & Vinyals 2019,
"Classification Accuracy Score"; Shmelkov et al. 2018, "How good is my GAN?").

A slice classifier is trained, for each of several seeds, on

* ``trtr``: real training slices only,
* ``tstr``: synthetic slices only (the real training set's class mix and count),
* ``mix<p>``: real + p % as many synthetic slices, spread evenly over the classes (how a data-poor
  study would use them: to fill its rare classes), for each ratio of ``evaluate.synthetic_per_real``,
* ``pretrain``: synthetic slices first, then real ones (half the updates each),
* ``duplicate_<best use>``: the control of the best use — real + as many *real* slices of the same
  classes, drawn again — so its gain can be told apart from what more (rebalanced) slices give,
* with a filtered sampler (``brainsynth.classifiers.filtering``): ``tstr_filtered`` and the best use again with
  filtered synthetic slices (``<best use>_filtered``),

all trained for the same number of updates (``epochs`` passes over the real slices, at least
``recipe.min_steps``), so that a gain comes from the data, not from longer training, and each
is tested on the real test split. Scores are **balanced accuracy** (mean per-class recall)
and macro-F1, because plain accuracy rewards a majority-class guesser on imbalanced cohorts.
Gains are per seed (paired), reported as mean and std; ``tstr_ratio`` is tstr / trtr (means).
With ``judge_recipe`` the independent judge (``brainsynth.classifiers.judge``) is fitted on real and on
synthetic slices too (``judge_trtr``, ``judge_tstr``).

Each seed's real-trained classifier (and judge) also grades the generator the other way round
("GAN-test"): the share of samples it assigns to the class they were drawn for, and the same for
reconstructions. Its penultimate layer is the in-domain feature space of
``metrics.frechet_distance`` and ``metrics.precision_recall`` (no downloaded weights).
The classifier is ``classifiers.slice.SliceClassifier`` (BatchNorm, dropout) trained with AdamW and a one-cycle
schedule (figures in experiments/results/2026-12-06-lab-notebook.md); its ``recipe`` is params.yaml's ``evaluate.classifier``
(width, dropout, batch_size, lr, min_steps — any object with those attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from brainsynth.classifiers.slice import SliceClassifier, budget, class_scores, per_class_recall, train_classifier
from brainsynth.inference import predict_classes


def balanced_synthetic_labels(n: int, n_classes: int, seed: int) -> np.ndarray:
    """``n`` labels spread as evenly as possible over the classes (the remainder to random classes)."""
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    extra = np.random.default_rng(seed).choice(n_classes, n - len(labels), replace=False) if n % n_classes else np.zeros(0, int)
    return np.sort(np.concatenate([labels, extra]).astype(np.int64))


def duplicated_real(real_x: np.ndarray, real_y: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """For each of ``labels``, a real slice of that class drawn at random (with replacement): the
    duplicate-real control of an augmentation with synthetic slices of those classes (the
    classifier's random flips augment the copies as they do every image)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(labels), *real_x.shape[1:]), real_x.dtype)
    for k in np.unique(labels):
        slots, members = np.flatnonzero(labels == k), np.flatnonzero(real_y == k)
        out[slots] = real_x[rng.choice(members, len(slots), replace=True)]
    return out


def use_names(ratios, pretrain: bool) -> list[str]:
    """The ways of using synthetic slices beside real ones: ``mix<percent>`` (real + ratio × as many
    synthetic, spread evenly over the classes) and ``pretrain`` (synthetic first, then real)."""
    return [f"mix{round(100 * r)}" for r in ratios if r > 0] + (["pretrain"] if pretrain else [])


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


@dataclass
class UtilityResult:
    """Per-seed scores of every classifier kind (``{kind: [scores per seed]}``; kinds: trtr, tstr,
    the uses, ``duplicate_<use>`` controls, ``judge_trtr``/``judge_tstr`` for the independent judge
    and, with the filtered export, ``tstr_filtered``/``judge_tstr_filtered``/``<best use>_filtered``),
    per-seed grades of given image sets by both families, and the per-seed real-trained CNNs."""

    scores: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    grades: dict[str, list[float]] = field(default_factory=dict)  # e.g. gan_test_balanced_accuracy, judge_gan_test_...: per seed
    uses: list[str] = field(default_factory=list)
    references: list[SliceClassifier] = field(default_factory=list)  # the trtr classifier of each seed

    @property
    def reference(self) -> SliceClassifier | None:
        return self.references[0] if self.references else None

    def add(self, kind: str, scores: dict[str, float]) -> None:
        self.scores.setdefault(kind, []).append(scores)

    def gain(self, kind: str, baseline: str) -> np.ndarray:
        """Per-seed balanced-accuracy gain of ``kind`` over ``baseline`` (paired by seed)."""
        return np.array([a["balanced_accuracy"] - b["balanced_accuracy"] for a, b in zip(self.scores[kind], self.scores[baseline])])

    def summary(self) -> dict[str, float]:
        """``{kind}_{score}_mean/_std``; ``gain_<use>_mean/_std`` (vs real-only); ``augment_gain_*``:
        the best use's gain vs real-only and (``_vs_duplicate``) vs its duplicate-real control;
        ``tstr_ratio`` and ``judge_tstr_ratio``; the grades' ``_mean``-less means and ``_std``."""
        out: dict[str, float] = {}
        for kind, runs in self.scores.items():
            for score in runs[0]:
                out[f"{kind}_{score}_mean"], out[f"{kind}_{score}_std"] = _mean_std([r[score] for r in runs])
        for use in self.uses:
            out[f"gain_{use}_mean"], out[f"gain_{use}_std"] = _mean_std(self.gain(use, "trtr"))
        if self.uses:
            best = max(self.uses, key=lambda use: out[f"gain_{use}_mean"])
            out["augment_gain_mean"], out["augment_gain_std"] = out[f"gain_{best}_mean"], out[f"gain_{best}_std"]
            control = f"duplicate_{best}" if f"duplicate_{best}" in self.scores else "trtr"  # pretraining on duplicated real = real-only
            out["augment_gain_vs_duplicate_mean"], out["augment_gain_vs_duplicate_std"] = _mean_std(self.gain(best, control))
            if f"{best}_filtered" in self.scores:
                out["augment_gain_filtered_mean"], out["augment_gain_filtered_std"] = _mean_std(self.gain(f"{best}_filtered", "trtr"))
                out["augment_gain_filtered_vs_duplicate_mean"], out["augment_gain_filtered_vs_duplicate_std"] = \
                    _mean_std(self.gain(f"{best}_filtered", control))
        for prefix in ("", "judge_"):
            for suffix in ("", "_filtered"):
                tstr, trtr = f"{prefix}tstr{suffix}_balanced_accuracy_mean", f"{prefix}trtr_balanced_accuracy_mean"
                if tstr in out and out.get(trtr, 0) > 0:
                    out[f"{prefix}tstr_ratio{suffix}"] = out[tstr] / out[trtr]
        for name, values in self.grades.items():
            out[name], std = _mean_std(values)
            if not name.startswith(("gan_test_", "judge_gan_test_")) or name.endswith("balanced_accuracy"):
                out[f"{name}_std"] = std
        return out


def utility(real_x: np.ndarray, real_y: np.ndarray, sample: Callable[[np.ndarray, int], np.ndarray], test_x: np.ndarray, test_y: np.ndarray,
            n_classes: int, epochs: int, seeds: list[int], ratios, pretrain: bool, device: torch.device, recipe, judge_recipe=None,
            graded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, class_names: list[str] | None = None,
            on_progress: Callable[[str], None] | None = None,
            filtered: Callable[[np.ndarray, int], np.ndarray] | None = None) -> UtilityResult:
    """Train and test every classifier kind once per seed (see the module docstring), all for the
    same number of updates.

    ``sample(labels, seed)`` → (N, S, S) uint8 synthetic images of those classes. ``ratios``: the
    mixing ratios (synthetic per real) to try; ``pretrain``: also pretrain on synthetic and fine-tune
    on real (half the updates each). The best use (highest mean gain over real-only) then gets its
    duplicate-real control: real + as many real slices of the same classes, drawn again (for
    pretraining, real-only is its own control: pretraining on real, then real, is real-only
    training). ``judge_recipe``:
    also fit the independent judge (``brainsynth.classifiers.judge``) on real and on synthetic slices.
    ``graded``: {name: (images, intended labels)} graded by each seed's real-trained CNN and judge
    (``<name>_balanced_accuracy``, per class ``<name>_<class>`` for ``gan_test``; ``judge_`` prefix).
    ``filtered``: a second sampler like ``sample`` (the filtered export, ``filtering.filtered_sampler``):
    TSTR by both families and the best use are repeated with its slices (``*_filtered``), drawn
    with the same seeds, so each filtered score is paired with its unfiltered one.
    """
    from brainsynth.classifiers.judge import train_judge

    result = UtilityResult(uses=use_names(ratios, pretrain))
    real_steps = budget(len(real_x), epochs, recipe)
    extra_labels: dict[tuple[int, str], np.ndarray] = {}  # the synthetic labels each (seed, mix) added
    filtered_x: dict[int, np.ndarray] = {}  # each seed's filtered synthetic training set

    def pretrained(synthetic_x: np.ndarray, seed: int) -> SliceClassifier:
        """Half the updates on synthetic slices (real_y's classes), then the other half on real ones."""
        classifier = train_classifier(synthetic_x, real_y, n_classes, epochs, seed, device, recipe, steps=real_steps // 2)
        return train_classifier(real_x, real_y, n_classes, epochs, seed, device, recipe, steps=real_steps - real_steps // 2, model=classifier)

    for index, seed in enumerate(seeds):
        progress = (lambda kind: on_progress(f"utility classifier {kind}, seed {index + 1}/{len(seeds)}")) if on_progress else (lambda kind: None)
        synthetic_x = sample(real_y, seed + 1000)
        sets = {"trtr": (real_x, real_y), "tstr": (synthetic_x, real_y)}
        if filtered is not None:
            filtered_x[seed] = filtered(real_y, seed + 1000)
            sets["tstr_filtered"] = (filtered_x[seed], real_y)
        for ratio in ratios:
            n_extra = int(round(ratio * len(real_x)))
            if n_extra == 0:
                continue
            use = f"mix{round(100 * ratio)}"
            extra_y = extra_labels[seed, use] = balanced_synthetic_labels(n_extra, n_classes, seed)
            sets[use] = (np.concatenate([real_x, sample(extra_y, seed + 2000)]), np.concatenate([real_y, extra_y]))
        for kind, (x, y) in sets.items():
            progress(kind)
            classifier = train_classifier(x, y, n_classes, epochs, seed, device, recipe, steps=real_steps)
            result.add(kind, class_scores(predict_classes(classifier, test_x), test_y))
            if kind == "trtr":
                result.references.append(classifier)
                _grade(result, "", lambda images, reference=classifier: predict_classes(reference, images), graded, class_names)
        if pretrain:
            progress("pretrain")
            classifier = pretrained(synthetic_x, seed)
            result.add("pretrain", class_scores(predict_classes(classifier, test_x), test_y))
        if judge_recipe is not None:
            progress("judge")
            real_judge = train_judge(real_x, real_y, seed, judge_recipe)
            result.add("judge_trtr", class_scores(real_judge.predict(test_x), test_y))
            result.add("judge_tstr", class_scores(train_judge(synthetic_x, real_y, seed, judge_recipe).predict(test_x), test_y))
            if filtered is not None:
                result.add("judge_tstr_filtered", class_scores(train_judge(filtered_x[seed], real_y, seed, judge_recipe).predict(test_x), test_y))
            _grade(result, "judge_", real_judge.predict, graded, class_names)
    best = max(result.uses, key=lambda use: result.gain(use, "trtr").mean(), default=None)
    if best is not None and best.startswith("mix"):
        for index, seed in enumerate(seeds):
            if on_progress:
                on_progress(f"utility classifier duplicate_{best} (control of the best use), seed {index + 1}/{len(seeds)}")
            extra_y = extra_labels[seed, best]
            x = np.concatenate([real_x, duplicated_real(real_x, real_y, extra_y, seed + 3000)])
            classifier = train_classifier(x, np.concatenate([real_y, extra_y]), n_classes, epochs, seed, device, recipe, steps=real_steps)
            result.add(f"duplicate_{best}", class_scores(predict_classes(classifier, test_x), test_y))
    if best is not None and filtered is not None:
        for index, seed in enumerate(seeds):
            if on_progress:
                on_progress(f"utility classifier {best}_filtered (the best use with the filtered export), seed {index + 1}/{len(seeds)}")
            if best == "pretrain":
                classifier = pretrained(filtered_x[seed], seed)
            else:
                extra_y = extra_labels[seed, best]
                x, y = np.concatenate([real_x, filtered(extra_y, seed + 2000)]), np.concatenate([real_y, extra_y])
                classifier = train_classifier(x, y, n_classes, epochs, seed, device, recipe, steps=real_steps)
            result.add(f"{best}_filtered", class_scores(predict_classes(classifier, test_x), test_y))
    return result


def _grade(result: UtilityResult, prefix: str, predict: Callable[[np.ndarray], np.ndarray], graded, class_names) -> None:
    """Balanced accuracy (and, for gan_test, per-class recall) with which ``predict`` reads the
    intended class of each graded set; appended per seed to ``result.grades``."""
    for name, (images, labels) in (graded or {}).items():
        predicted = predict(images)
        result.grades.setdefault(f"{prefix}{name}_balanced_accuracy", []).append(class_scores(predicted, labels)["balanced_accuracy"])
        if name == "gan_test" and class_names:
            for cls, recall in per_class_recall(predicted, labels, class_names).items():
                result.grades.setdefault(f"{prefix}gan_test_{cls}", []).append(recall)
