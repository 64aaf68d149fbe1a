"""Metric families: each a function of the evaluation's plain arrays (``Evaluation``) returning
``{metric name: value}``, registered with ``@family`` and run by ``compute`` in declaration order
(the families that draw from the shared generator ``rng`` must keep their order, or the draws and
so the numbers change). Names and directions are in ``brainsynth.catalogue``.

**A new metric is one family function here (or a key in an existing one) and one catalogue row.**

A family may leave arrays for the figures in ``extras`` (keys of its own), a line for the run's
notes in ``notes``, and the downstream utility family leaves each seed's real-trained CNN in
``references`` for the families after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from brainsynth import metrics as M
from brainsynth.classifiers.slice import penultimate_features


@dataclass
class Evaluation:
    """The inputs of every family: ``real`` (N, S, S) uint8 test slices and their labels (N,), as many
    ``samples`` drawn for the same labels and the ``recon``-structions of ``real``; the training split;
    class names; the seed, the swd settings (patches per image, directions), the MS-SSIM pair count
    and the generator shared by the families that draw. ``utility(rng)`` → (summary, reference
    classifier), or None when the utility test is skipped."""

    real: np.ndarray
    real_labels: np.ndarray
    samples: np.ndarray
    recon: np.ndarray
    train_images: np.ndarray
    train_labels: np.ndarray
    class_names: list[str]
    seed: int
    swd_settings: tuple[int, int]
    n_pairs: int
    rng: np.random.Generator
    utility: Callable | None = None
    latent_numbers: int = 0  # numbers in the model's z (the PCA reference of reconstruction has as many components); 0 = no reference
    references: list = field(default_factory=list)  # each seed's real-trained CNN (set by the utility family)
    extras: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


FAMILIES: list[tuple[str, Callable[[Evaluation], dict[str, float]]]] = []


def family(name: str) -> Callable:
    def register(fn: Callable[[Evaluation], dict[str, float]]) -> Callable:
        FAMILIES.append((name, fn))
        return fn

    return register


def compute(e: Evaluation) -> dict[str, float]:
    """Every family's metrics, in declaration order."""
    results: dict[str, float] = {}
    for _, fn in FAMILIES:
        results.update(fn(e))
    return results


@family("reconstruction")
def reconstruction(e: Evaluation) -> dict[str, float]:
    """PSNR and SSIM of the reconstructions; ``recon_psnr_pca``: PCA with as many components as z has
    numbers, fitted on the training split, same PSNR (the linear bar a latent of that size should clear)."""
    out = {"recon_psnr": M.psnr(e.real, e.recon), "recon_ssim": M.mean_ssim(e.real, e.recon)}
    if e.latent_numbers:
        out["recon_psnr_pca"] = M.pca_psnr(e.train_images, e.real, e.latent_numbers, e.seed)
    return out


@family("realism")
def realism(e: Evaluation) -> dict[str, float]:
    """swd (and per scale) of samples vs real test slices; ``swd_real_baseline``: as many real training slices vs the same."""
    out = dict(M.swd(e.real, e.samples, e.seed, *e.swd_settings))
    if len(e.train_images) >= len(e.real):
        baseline = e.train_images[np.sort(e.rng.choice(len(e.train_images), len(e.real), replace=False))]
        out["swd_real_baseline"] = M.swd(e.real, baseline, e.seed, *e.swd_settings)["swd"]
    return out


@family("diversity")
def diversity(e: Evaluation) -> dict[str, float]:
    """Mean MS-SSIM over random pairs of samples and of real slices (higher = less diverse)."""
    return {"ms_ssim_samples": M.ms_ssim_pairs(e.samples, e.n_pairs, e.seed), "ms_ssim_real": M.ms_ssim_pairs(e.real, e.n_pairs, e.seed)}


@family("per_class")
def per_class(e: Evaluation) -> dict[str, float]:
    """swd and MS-SSIM within each class with at least 8 test slices."""
    out = {}
    for k, name in enumerate(e.class_names):
        members = e.real_labels == k
        if members.sum() >= 8 and len(e.class_names) > 1:
            out[f"swd_{name}"] = M.swd(e.real[members], e.samples[members], e.seed, *e.swd_settings)["swd"]
            out[f"ms_ssim_samples_{name}"] = M.ms_ssim_pairs(e.samples[members], e.n_pairs, e.seed)
            out[f"ms_ssim_real_{name}"] = M.ms_ssim_pairs(e.real[members], e.n_pairs, e.seed)
    return out


@family("memorization")
def memorization(e: Evaluation) -> dict[str, float]:
    """nn_ratio and memorization_rate (``metrics.memorization_audit``); the distances stay for the figure."""
    audit = M.memorization_audit(e.samples, e.real, e.train_images)
    e.extras["audit"] = audit
    return {k: v for k, v in audit.items() if not k.startswith("_")}


@family("utility")
def utility(e: Evaluation) -> dict[str, float]:
    """TRTR / TSTR / the uses of synthetic slices and their duplicate-real controls, by the CNN and
    the independent judge, and both families' grades of samples, reconstructions and real slices
    (``downstream.utility``, through the stage's cache); leaves each seed's real-trained CNN in
    ``references``."""
    if e.utility is None:
        return {}
    summary, e.references = e.utility(e.rng)
    return {**summary, "chance_balanced_accuracy": 1.0 / len(e.class_names)}


@family("features")
def features(e: Evaluation) -> dict[str, float]:
    """Fréchet distance and precision/recall in each seed's real-trained CNN's feature space (mean
    and ``_std`` over seeds: one classifier's features made these numbers differ between machines):
    samples vs real test slices, and (``_real``) as many real training slices vs the same test slices."""
    if not e.references:
        return {}
    baseline = None
    if len(e.train_images) >= len(e.real):
        baseline = e.train_images[np.sort(e.rng.choice(len(e.train_images), len(e.real), replace=False))]
    per_seed: dict[str, list[float]] = {}
    for reference in e.references:
        real_features, sample_features = penultimate_features(reference, e.real), penultimate_features(reference, e.samples)
        values = {"feature_fd": M.frechet_distance(real_features, sample_features),
                  **{f"feature_{k}": v for k, v in M.precision_recall(real_features, sample_features).items()}}
        if baseline is not None:
            baseline_features = penultimate_features(reference, baseline)
            values["feature_fd_real"] = M.frechet_distance(real_features, baseline_features)
            values.update({f"feature_{k}_real": v for k, v in M.precision_recall(real_features, baseline_features).items()})
        for key, value in values.items():
            per_seed.setdefault(key, []).append(value)
    out = {}
    for key, values in per_seed.items():
        out[key] = float(np.mean(values))
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


@family("morphometry")
def morphometry(e: Evaluation) -> dict[str, float]:
    """CSF area fraction per class on real test slices, samples and real training slices; their
    per-class 1-D Wasserstein distances and the worst class's ratio to the real-vs-real distance.
    The per-class fractions stay in ``extras["morphometry"]`` (real, generated, reference) for the figure."""
    names = e.class_names or ["all"]
    fr, fg, ft = M.csf_fraction(e.real), M.csf_fraction(e.samples), M.csf_fraction(e.train_images)
    by_class = lambda values, labels: {name: values[labels == k] for k, name in enumerate(names) if (labels == k).any()}  # noqa: E731
    real_d, gen_d, ref_d = by_class(fr, e.real_labels), by_class(fg, e.real_labels), by_class(ft, e.train_labels)
    out: dict[str, float] = {}
    ratios = []
    for name in real_d:
        out[f"csf_fraction_real_{name}"] = float(np.nanmean(real_d[name]))
        out[f"csf_fraction_generated_{name}"] = float(np.nanmean(gen_d[name]))
        out[f"morph_distance_{name}"] = M.morphometric_distance(gen_d[name], real_d[name])
        if name in ref_d:
            out[f"morph_distance_real_{name}"] = M.morphometric_distance(ref_d[name], real_d[name])
            ratios.append(out[f"morph_distance_{name}"] / max(out[f"morph_distance_real_{name}"], 1e-6))
    if ratios:
        out["morph_distance_ratio"] = float(max(ratios))
    e.extras["morphometry"] = (real_d, gen_d, ref_d)
    return out


@family("fid")
def fid(e: Evaluation) -> dict[str, float]:
    """FID / KID only when Inception weights are already on disk (never downloaded)."""
    values, e.notes["fid"] = M.fid_kid(e.real, e.samples)
    return values
