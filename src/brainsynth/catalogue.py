"""Every evaluate metric once: its name, group, direction, the reference it is read against, and
whether it may decide the registry's champion or is copied onto a registered version. The
headline, the grouped ``metrics/evaluate.json``, the registry and the config's
``mlflow.champion_metric`` check and ``docs/metrics.md`` all read this table. No torch, no MLflow.

**A new metric is one row here and one family function in ``evaluation.families``.**

Groups, in the order of the metrics file (so ``dvc exp show`` and ``dvc metrics diff`` read by
theme, the quality columns first): realism, anatomy, coverage, utility, diversity, reconstruction,
memorization. Keys that are no row (per-class and per-scale details such as ``swd_healthy``,
``gan_test_mild``) take the group of their family prefix (``FAMILIES``); inside a group the
``lead`` rows come first, in table order, then the rest alphabetically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GROUPS = ("realism", "anatomy", "coverage", "utility", "diversity", "reconstruction", "memorization")


@dataclass(frozen=True)
class Metric:
    name: str  # key in metrics/evaluate.json and MLflow
    group: str
    better: Literal["higher", "lower"] | None = None  # None: a reference value or a count, not a goal
    reference: str | None = None  # the key it must be read against (real-vs-real, chance)
    lead: bool = False  # one of the group's first columns in `dvc exp show`
    champion: bool = False  # can be mlflow.champion_metric
    version_tag: bool = False  # copied onto the registered version as eval.<name>
    meaning: str = ""  # what it measures (docs/metrics.md is generated from this table)


CATALOGUE: tuple[Metric, ...] = (
    Metric("swd", "realism", "lower", "swd_real_baseline", lead=True, champion=True, version_tag=True,
           meaning='sliced Wasserstein distance ×1e3 between 7×7 patch distributions of a Laplacian pyramid (ProGAN), samples vs as many test slices of the same class mix (`swd_<res>` per level, `swd_<class>` per class)'),
    Metric("swd_real_baseline", "realism", lead=True, version_tag=True,
           meaning='the same distance between real training and real test slices'),
    Metric("feature_fd", "realism", "lower", "feature_fd_real", lead=True, champion=True,
           meaning="Fréchet distance between samples and test slices in the feature space of each seed's real-trained CNN (no downloaded weights); mean (± `_std`) over seeds"),
    Metric("feature_fd_real", "realism", lead=True,
           meaning='the same between as many real training slices and the test slices'),
    Metric("fid", "realism", "lower", lead=True,
           meaning="Fréchet Inception distance, only when torch-fidelity's Inception weights are already on disk (never downloaded)"),
    Metric("kid", "realism", "lower", lead=True,
           meaning='kernel Inception distance, as `fid`'),
    Metric("morph_distance_ratio", "anatomy", "lower", lead=True, champion=True, version_tag=True,
           meaning="morphometry: the worst class's 1-D Wasserstein distance between the CSF-area-fraction distributions of samples and test slices, ÷ its real-vs-real distance (`morph_distance_<class>`, `csf_fraction_*` per class)"),
    Metric("feature_precision", "coverage", "higher", "feature_precision_real", lead=True, version_tag=True,
           meaning='improved precision (Kynkäänniemi et al. 2019, k = 3) of samples against test slices in the CNN feature space: realism'),
    Metric("feature_precision_real", "coverage", lead=True,
           meaning='the same for real training slices'),
    Metric("feature_recall", "coverage", "higher", "feature_recall_real", lead=True, champion=True, version_tag=True,
           meaning='improved recall in the same space: coverage of the real distribution'),
    Metric("feature_recall_real", "coverage", lead=True,
           meaning='the same for real training slices'),
    # The independent judge first (brainsynth.classifiers.judge: no training, tuning or filtering path sees it).
    Metric("judge_tstr_ratio", "utility", "higher", lead=True,
           meaning="the independent judge's TSTR ÷ TRTR balanced accuracy (means): how good synthetic slices are as training data"),
    Metric("judge_tstr_balanced_accuracy_mean", "utility", "higher", "judge_trtr_balanced_accuracy_mean", lead=True, champion=True,
           version_tag=True,
           meaning='balanced accuracy on the real test slices of the independent judge (gradient-boosted trees on anatomical features; no training, tuning or filtering path sees it) fitted on synthetic slices'),
    Metric("judge_trtr_balanced_accuracy_mean", "utility", lead=True,
           meaning='the same judge fitted on the real training slices'),
    Metric("judge_gan_test_balanced_accuracy", "utility", "higher", "judge_real_class_balanced_accuracy", lead=True, champion=True,
           meaning='the real-fitted judge applied to samples, graded against the class they were drawn for'),
    # The best use of synthetic slices (the highest mean gain among evaluate.synthetic_per_real and
    # evaluate.pretrain), against real-only and against its duplicate-real control, paired by seed.
    Metric("augment_gain_mean", "utility", "higher", lead=True, champion=True, version_tag=True,
           meaning='the best use of synthetic slices (the highest mean gain among the mixes of `evaluate.synthetic_per_real` and pretraining) minus real-only, balanced accuracy, paired by seed (± `augment_gain_std`)'),
    Metric("augment_gain_std", "utility", lead=True,
           meaning='its std over seeds'),
    Metric("augment_gain_vs_duplicate_mean", "utility", "higher", lead=True, champion=True, version_tag=True,
           meaning='the same gain against the duplicate-real control: real + as many real slices of the same classes drawn again'),
    Metric("augment_gain_vs_duplicate_std", "utility", lead=True,
           meaning='its std over seeds'),
    # The filtered export (brainsynth.classifiers.filtering, evaluate.filter): the same slices' count, the best
    # 1/oversample of the draws by a held-out real-trained CNN ensemble; read against the unfiltered figure.
    Metric("judge_tstr_filtered_balanced_accuracy_mean", "utility", "higher", "judge_tstr_balanced_accuracy_mean",
           meaning="judge TSTR with the filtered export's slices (`evaluate.filter`: the best 1/oversample of the draws by a held-out real-trained ensemble)"),
    Metric("judge_gan_test_filtered_balanced_accuracy", "utility", "higher", "judge_gan_test_balanced_accuracy",
           meaning='judge GAN-test of the filtered slices'),
    Metric("augment_gain_filtered_mean", "utility", "higher", "augment_gain_mean",
           meaning="the best use's gain with filtered slices"),
    Metric("tstr_ratio", "utility", "higher", lead=True,
           meaning="TSTR ÷ TRTR balanced accuracy of the project's CNN (`evaluate.classifier`)"),
    Metric("trtr_balanced_accuracy_mean", "utility", lead=True, version_tag=True,
           meaning='the CNN trained on the real training slices, tested on the real test slices (mean over `evaluate.utility_seeds`; `macro_f1` and `_std` too)'),
    Metric("tstr_balanced_accuracy_mean", "utility", "higher", "trtr_balanced_accuracy_mean", lead=True, champion=True, version_tag=True,
           meaning='the CNN trained on as many synthetic slices with the same class mix'),
    Metric("gan_test_balanced_accuracy", "utility", "higher", "real_class_balanced_accuracy", lead=True, champion=True,
           meaning="each seed's real-trained CNN applied to samples, graded against the class they were drawn for (`gan_test_<class>` per class)"),
    Metric("chance_balanced_accuracy", "utility", lead=True,
           meaning='1 / the number of classes'),
    Metric("ms_ssim_samples", "diversity", "lower", "ms_ssim_real", lead=True,
           meaning="mean MS-SSIM over random pairs of samples; far above the real pairs' = mode collapse"),
    Metric("ms_ssim_real", "diversity", lead=True,
           meaning='the same over pairs of real test slices'),
    Metric("recon_psnr", "reconstruction", "higher", "recon_psnr_pca", lead=True, champion=True, version_tag=True,
           meaning='PSNR of posterior-mean reconstructions of the test slices'),
    Metric("recon_psnr_pca", "reconstruction", lead=True,
           meaning='PSNR of PCA reconstructions with as many components as z has numbers (fitted on the training slices)'),
    Metric("recon_ssim", "reconstruction", "higher", lead=True,
           meaning='SSIM of the reconstructions'),
    Metric("recon_class_balanced_accuracy", "reconstruction", "higher", "real_class_balanced_accuracy", lead=True,
           meaning='the real-trained CNN applied to the reconstructions of the test slices'),
    Metric("memorization_rate", "memorization", "lower", lead=True, version_tag=True,
           meaning='share of samples closer to a training slice (or its mirror image) than the 1st percentile of test → train distances'),
    Metric("nn_ratio", "memorization", "higher", lead=True,
           meaning='median distance sample → nearest training slice ÷ median test slice → nearest training slice; ≪ 1 = copies'),
)
# Key prefixes of the details that are no row (first match wins, in this order).
FAMILIES = (
    ("realism", ("swd", "feature_fd", "fid", "kid")),
    ("anatomy", ("morph_", "csf_")),
    ("coverage", ("feature_precision", "feature_recall")),
    ("utility", ("trtr_", "tstr_", "mix", "pretrain_", "duplicate_", "gain_", "augment_", "gan_test_", "real_class_", "chance_", "judge_",
                 "filter_")),
    ("diversity", ("ms_ssim_",)),
    ("reconstruction", ("recon_",)),
    ("memorization", ("memorization_", "nn_")),
)
NOT_METRICS = ("n_images", "seconds")  # counts and timings: the log and MLflow only



def row(name: str) -> Metric | None:
    return next((m for m in CATALOGUE if m.name == name), None)


def leading() -> tuple[str, ...]:
    return tuple(m.name for m in CATALOGUE if m.lead)


def champion_metrics() -> tuple[str, ...]:
    """The metrics ``mlflow.champion_metric`` may name."""
    return tuple(m.name for m in CATALOGUE if m.champion)


def version_metrics() -> tuple[str, ...]:
    """The metrics copied onto a registered version as ``eval.<name>`` tags."""
    return tuple(m.name for m in CATALOGUE if m.version_tag)


def group_of(key: str) -> str:
    metric = row(key)
    if metric is not None:
        return metric.group
    return next((name for name, prefixes in FAMILIES if key.startswith(prefixes)), "other")


def lower_is_better(name: str) -> bool:
    """The direction of a goal metric (KeyError for a reference value or an unknown key)."""
    metric = row(name)
    if metric is None or metric.better is None:
        raise KeyError(f"{name} is no goal metric of the catalogue")
    return metric.better == "lower"


def grouped(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Flat evaluate metrics → {group: {key: value}} (keys unchanged; unknown keys under "other")."""
    out: dict[str, dict[str, float]] = {name: {} for name in GROUPS}
    lead = leading()
    for key in sorted(metrics, key=lambda k: (lead.index(k) if k in lead else len(lead), k)):
        if key not in NOT_METRICS:
            out.setdefault(group_of(key), {})[key] = metrics[key]
    return {name: values for name, values in out.items() if values}


def flattened(metrics: dict) -> dict[str, float]:
    """The inverse of ``grouped`` (a flat file passes through)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


# What the details that are no row hold (docs/metrics.md), by key pattern.
DETAILS = (
    ("swd_<res>, swd_<class>", "the SWD per pyramid level and per class"),
    ("csf_fraction_real_<class>, csf_fraction_generated_<class>, morph_distance_<class>, morph_distance_real_<class>",
     "the morphometry per class: mean CSF area fractions and the distances behind the ratio"),
    ("trtr_*, tstr_*, mix<p>_*, pretrain_*, duplicate_*, gain_<use>_*", "each way of training the CNN (`balanced_accuracy`, `macro_f1`, each "
     "`_mean` and `_std` over seeds) and each use's gain over real-only"),
    ("*_filtered_*, filter_held_out_balanced_accuracy", "the same with the filtered export's slices; the filter ensemble's accuracy on the "
     "subjects each member did not see"),
    ("gan_test_<class>, real_class_balanced_accuracy, judge_real_class_balanced_accuracy",
     "GAN-test per class; the real-trained classifiers on the real test slices (the GAN-test reference)"),
    ("judge_*", "the independent judge's counterparts of the CNN's figures"),
    ("ms_ssim_samples_<class>", "MS-SSIM of samples per class"),
)
