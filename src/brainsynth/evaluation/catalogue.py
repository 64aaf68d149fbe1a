"""Every evaluate metric once: its name, group, direction, the reference it is read against, and
whether it may decide the registry's champion or is copied onto a registered version. The
headline, the grouped ``metrics/evaluate.json``, the registry and the config's
``mlflow.champion_metric`` check all read this table. No torch, no MLflow.

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


CATALOGUE: tuple[Metric, ...] = (
    Metric("swd", "realism", "lower", "swd_real_baseline", lead=True, champion=True, version_tag=True),
    Metric("swd_real_baseline", "realism", lead=True, version_tag=True),
    Metric("feature_fd", "realism", "lower", "feature_fd_real", lead=True, champion=True),
    Metric("feature_fd_real", "realism", lead=True),
    Metric("fid", "realism", "lower", lead=True),
    Metric("kid", "realism", "lower", lead=True),
    Metric("morph_distance_ratio", "anatomy", "lower", lead=True, champion=True, version_tag=True),
    Metric("feature_precision", "coverage", "higher", "feature_precision_real", lead=True, version_tag=True),
    Metric("feature_precision_real", "coverage", lead=True),
    Metric("feature_recall", "coverage", "higher", "feature_recall_real", lead=True, champion=True, version_tag=True),
    Metric("feature_recall_real", "coverage", lead=True),
    # The independent judge first (brainsynth.judge: no training, tuning or filtering path sees it).
    Metric("judge_tstr_ratio", "utility", "higher", lead=True),
    Metric("judge_tstr_balanced_accuracy_mean", "utility", "higher", "judge_trtr_balanced_accuracy_mean", lead=True, champion=True,
           version_tag=True),
    Metric("judge_trtr_balanced_accuracy_mean", "utility", lead=True),
    Metric("judge_gan_test_balanced_accuracy", "utility", "higher", "judge_real_class_balanced_accuracy", lead=True, champion=True),
    # The best use of synthetic slices (the highest mean gain among evaluate.synthetic_per_real and
    # evaluate.pretrain), against real-only and against its duplicate-real control, paired by seed.
    Metric("augment_gain_mean", "utility", "higher", lead=True, champion=True, version_tag=True),
    Metric("augment_gain_std", "utility", lead=True),
    Metric("augment_gain_vs_duplicate_mean", "utility", "higher", lead=True, champion=True, version_tag=True),
    Metric("augment_gain_vs_duplicate_std", "utility", lead=True),
    # The filtered export (brainsynth.filtering, evaluate.filter): the same slices' count, the best
    # 1/oversample of the draws by a held-out real-trained CNN ensemble; read against the unfiltered figure.
    Metric("judge_tstr_filtered_balanced_accuracy_mean", "utility", "higher", "judge_tstr_balanced_accuracy_mean"),
    Metric("judge_gan_test_filtered_balanced_accuracy", "utility", "higher", "judge_gan_test_balanced_accuracy"),
    Metric("augment_gain_filtered_mean", "utility", "higher", "augment_gain_mean"),
    Metric("tstr_ratio", "utility", "higher", lead=True),
    Metric("trtr_balanced_accuracy_mean", "utility", lead=True, version_tag=True),
    Metric("tstr_balanced_accuracy_mean", "utility", "higher", "trtr_balanced_accuracy_mean", lead=True, champion=True, version_tag=True),
    Metric("gan_test_balanced_accuracy", "utility", "higher", "real_class_balanced_accuracy", lead=True, champion=True),
    Metric("chance_balanced_accuracy", "utility", lead=True),
    Metric("ms_ssim_samples", "diversity", "lower", "ms_ssim_real", lead=True),
    Metric("ms_ssim_real", "diversity", lead=True),
    Metric("recon_psnr", "reconstruction", "higher", "recon_psnr_pca", lead=True, champion=True, version_tag=True),
    Metric("recon_psnr_pca", "reconstruction", lead=True),
    Metric("recon_ssim", "reconstruction", "higher", lead=True),
    Metric("recon_class_balanced_accuracy", "reconstruction", "higher", "real_class_balanced_accuracy", lead=True),
    Metric("memorization_rate", "memorization", "lower", lead=True, version_tag=True),
    Metric("nn_ratio", "memorization", "higher", lead=True),
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
