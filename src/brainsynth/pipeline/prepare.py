"""prepare: build (embedded) or ingest (image folder) the cohort → data/prepared/."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import numpy as np

from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.data.embedded import build_cohort
from brainsynth.data.folder import DataError, read_image_folder
from brainsynth.data.splits import SPLITS, split_by_subject
from brainsynth.pipeline.common import atomic_dir, stage_run, write_metrics
from brainsynth.viz import class_rows, labelled_grid

OUT_DIR = Path("data/prepared")


def count_table(labels: np.ndarray, subjects: np.ndarray, splits: np.ndarray, class_names: list[str]) -> dict:
    """Slices per split × class, and subjects per split."""
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
    with stage_run("prepare", cfg) as run_info:
        source = cfg.data.source
        if source == "embedded":
            log.info("building the embedded synthetic cohort (%d subjects × %d slices, %d px)",
                     cfg.data.embedded.n_subjects, cfg.data.embedded.slices_per_subject, cfg.data.image_size)
            cohort = build_cohort(cfg.data.embedded, cfg.data.image_size, cfg.seed, progress=True)
        else:
            log.info("reading image folder %s", source)
            cohort = read_image_folder(Path(source), cfg.data.image_size, cfg.data.subject_pattern)
        splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
        counts = count_table(cohort.labels, cohort.subjects, splits, cohort.class_names)
        if counts["train/n_images"] == 0 or counts["test/n_images"] == 0:
            raise DataError(f"data.source {source!r}: too few subjects ({counts['n_subjects']}) for a train and a test split")
        meta = {
            "source": source,
            "image_size": cfg.data.image_size,
            "class_names": cohort.class_names,
            "counts": counts,
            "mlflow_run_id": run_info.info.run_id,
        }
        with atomic_dir(OUT_DIR) as staging:
            prepared.save(staging, cohort.images, cohort.labels, cohort.subjects, splits, meta)
            rows, names = class_rows(cohort.images, cohort.labels, cohort.class_names, 10, np.random.default_rng(cfg.seed))
            labelled_grid(rows, names, staging / "preview.png", title=f"prepared cohort ({source}): random slices per class")
        seconds = time.perf_counter() - started
        metrics = {**counts, "seconds": round(seconds, 2)}
        write_metrics("prepare", metrics)
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})
        mlflow.log_artifact(str(OUT_DIR / "preview.png"), artifact_path="figures")
        mlflow.log_artifact(str(OUT_DIR / prepared.META_FILE))
        log.info("prepared %d slices of %d subjects in %.1fs: %s", counts["n_images"], counts["n_subjects"], seconds,
                 ", ".join(f"{s}={counts[f'{s}/n_images']}" for s in SPLITS))
