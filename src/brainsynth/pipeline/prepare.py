"""prepare: build (embedded) or ingest (images, NIfTI, DICOM folder) the cohort → data/prepared/."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import mlflow
import numpy as np

from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.data.embedded import build_cohort
from brainsynth.data.errors import DataError
from brainsynth.data.ingest import check_bad_fraction, ingest
from brainsynth.data.splits import SPLITS, check_subjects_isolated, split_by_subject, subjects_in_several_classes, subsample_train_subjects
from brainsynth.files import atomic_dir
from brainsynth.paths import LOG_DIR, PREPARED_DIR, SKIPPED_REPORT
from brainsynth.pipeline.stage import mlflow_run, write_metrics
from brainsynth.tracking import tag_outputs
from brainsynth.viz import class_rows, labelled_grid


def count_table(labels: np.ndarray, subjects: np.ndarray, splits: np.ndarray, class_names: list[str]) -> dict:
    """Slices per split × class, and subjects (persons) per split."""
    counts: dict = {"n_images": int(len(labels)), "n_subjects": int(len(np.unique(subjects)))}
    for split in SPLITS:
        mask = splits == split
        counts[f"{split}/n_images"] = int(mask.sum())
        counts[f"{split}/n_subjects"] = int(len(np.unique(subjects[mask])))
        for k, name in enumerate(class_names):
            counts[f"{split}/{name}"] = int((mask & (labels == k)).sum())
    return counts


def run(cfg: Config, log: logging.Logger) -> None:
    started = time.perf_counter()
    with mlflow_run("prepare", cfg):
        cohort, ingested = read_cohort(cfg, log)
        cohort, splits = split_cohort(cohort, cfg, log)
        counts = checked_counts(cohort, splits, cfg.data.source, log)
        file_counts = ingested.counts() if ingested else {}
        meta = {
            "source": cfg.data.source,
            "format": ingested.kind if ingested else "embedded",
            "image_size": cfg.data.image_size,
            # in-plane mm per pixel: the export writes it into NIfTI headers (None: 2-D images carry no spacing)
            "pixel_mm": ingested.pixel_mm if ingested else round(cfg.data.embedded.field_of_view_mm / cfg.data.image_size, 4),
            "class_names": cohort.class_names,
            "counts": counts,
            "files": file_counts,
        }
        with atomic_dir(PREPARED_DIR) as staging:
            prepared.save(staging, cohort.images, cohort.labels, cohort.subjects, splits, meta)
            if ingested:
                ingested.write_report(staging / SKIPPED_REPORT.name)
            rows, names = class_rows(cohort.images, cohort.labels, cohort.class_names, 10, np.random.default_rng(cfg.seed))
            labelled_grid(rows, names, staging / "preview.png", title=f"prepared cohort ({cfg.data.source}): random slices per class")
        seconds = time.perf_counter() - started
        metrics = {**counts, **file_counts, "seconds": round(seconds, 2)}
        # metrics/prepare.json: what the data is (size, persons, unusable files); per-split counts
        # and the time go to MLflow and the log
        write_metrics("prepare", {"data": {k: v for k, v in metrics.items() if "/" not in k and k != "seconds"}})
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})
        tag_outputs(PREPARED_DIR)
        mlflow.log_artifact(str(PREPARED_DIR / "preview.png"), artifact_path="figures")
        mlflow.log_artifact(str(PREPARED_DIR / prepared.META_FILE))
        log.info("prepared %d slices of %d subjects in %.1fs: %s", counts["n_images"], counts["n_subjects"], seconds,
                 ", ".join(f"{s}={counts[f'{s}/n_images']}" for s in SPLITS))


def read_cohort(cfg: Config, log: logging.Logger):
    """The cohort of ``data.source``: built (embedded) or ingested from a folder; returns (cohort,
    the ingestion result or None). Unusable files are reported (to MLflow too) before the check
    against ``data.max_bad_fraction``, so a failed run shows them."""
    source = cfg.data.source
    if source == "embedded":
        log.info("building the embedded synthetic cohort (%d subjects × %d slices, %d px)",
                 cfg.data.embedded.n_subjects, cfg.data.embedded.slices_per_subject, cfg.data.image_size)
        return build_cohort(cfg.data.embedded, cfg.data.image_size, cfg.seed, progress=True), None
    log.info("reading %s (data.format: %s)", source, cfg.data.format)
    ingested = ingest(cfg.data)
    cohort, file_counts = ingested.cohort, ingested.counts()
    log.info("%s: %d files, %d slices from them, %d skipped, %d upsampled (smaller than %d px)", ingested.kind,
             ingested.n_files, len(cohort.images), len(ingested.skipped), ingested.upsampled, cfg.data.image_size)
    if ingested.skipped:
        report = ingested.write_report(LOG_DIR / f"prepare_{SKIPPED_REPORT.name}")
        mlflow.log_artifact(str(report))
        log.warning("skipped %d files: %s (list in %s)", len(ingested.skipped),
                    ", ".join(f"{k.removeprefix('skipped_')}={v}" for k, v in file_counts.items() if k.startswith("skipped_")), report)
        check_bad_fraction(ingested, cfg.data.max_bad_fraction, source, report)
    if ingested.upsampled:
        log.warning("%d slices came from images smaller than data.image_size=%d and were upsampled", ingested.upsampled, cfg.data.image_size)
    return cohort, ingested


def split_cohort(cohort, cfg: Config, log: logging.Logger):
    """Subject-level train/val/test splits; with ``data.train_fraction`` < 1 the left-out training
    subjects leave the prepared data altogether, so tune, train and evaluate see only the small
    cohort a data-poor study would have. Returns (cohort, splits)."""
    splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    check_subjects_isolated(cohort.subjects, splits)
    if cfg.data.train_fraction < 1.0:
        splits = subsample_train_subjects(cohort.subjects, cohort.labels, splits, cfg.data.train_fraction, cfg.seed)
        kept = splits != "unused"
        log.info("data.train_fraction=%g: %d of %d training subjects kept (per class, seeded); val and test unchanged",
                 cfg.data.train_fraction, len(np.unique(cohort.subjects[splits == "train"])),
                 len(np.unique(cohort.subjects[(splits == "train") | ~kept])))
        cohort = replace(cohort, images=cohort.images[kept], labels=cohort.labels[kept], subjects=cohort.subjects[kept])
        splits = splits[kept]
    return cohort, splits


def checked_counts(cohort, splits: np.ndarray, source: str, log: logging.Logger) -> dict:
    """``count_table`` plus the subjects found in several classes; warns about classes too small to
    split and fails when there is no train or no test split."""
    counts = count_table(cohort.labels, cohort.subjects, splits, cohort.class_names)
    for k, name in enumerate(cohort.class_names):
        n = len(np.unique(cohort.subjects[cohort.labels == k]))
        if 0 < n < 3:
            log.warning("class %r has %d subject(s): all of them go to train and the class is absent from val and test "
                        "(a class needs at least 3 subjects to be split)", name, n)
    mixed = subjects_in_several_classes(cohort.subjects, cohort.labels)
    counts["subjects_in_several_classes"] = len(mixed)
    if mixed:
        log.warning("%d subject(s) have slices in more than one class (e.g. %r): each is split by its most frequent class; "
                    "if they are different people, data.subject_pattern merges them", len(mixed), mixed[0])
    if counts["train/n_images"] == 0 or counts["test/n_images"] == 0:
        raise DataError(f"data.source {source!r}: too few subjects ({counts['n_subjects']}) for a train and a test split "
                        "(each class needs at least 3 subjects)")
    return counts
