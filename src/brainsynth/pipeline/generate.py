"""generate: synthetic slices from the trained model → data/synthetic/ (PNG per class, optional NIfTI
stacks, manifest.json), when ``generate.enabled``; otherwise an empty folder with a manifest saying so.
The same export is available outside DVC as ``brainsynth-generate``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import mlflow

from brainsynth.config import Config
from brainsynth.engine import resolve_device
from brainsynth.generate import export
from brainsynth.inference import SynthModel
from brainsynth.pipeline.common import atomic_dir, read_json, stage_run, upstream_tags, write_metrics
from brainsynth.pipeline.train import MODEL_FILE
from brainsynth.pipeline.train import OUT_DIR as TRAIN_DIR

OUT_DIR = Path("data/synthetic")


def run(cfg: Config, log: logging.Logger) -> None:
    started = time.perf_counter()
    with stage_run("generate", cfg, upstream_tags("train", read_json(TRAIN_DIR / "meta.json", "train"))):
        if not cfg.generate.enabled:
            with atomic_dir(OUT_DIR) as staging:
                (staging / "manifest.json").write_text(json.dumps({"enabled": False, "files": []}, indent=2) + "\n")
            write_metrics("generate", {"enabled": 0, "n_images": 0})
            log.info("generate.enabled is false: nothing generated (dvc exp run -S generate.enabled=true to export)")
            return
        model = SynthModel.load(TRAIN_DIR / MODEL_FILE, resolve_device(cfg.train.device))
        manifest = export(model, OUT_DIR, cfg.generate.n_per_class, cfg.seed, cfg.generate.nifti, str(TRAIN_DIR / MODEL_FILE))
        seconds = time.perf_counter() - started
        metrics = {"enabled": 1, "n_images": len(manifest["files"]), "seconds": round(seconds, 2)}
        write_metrics("generate", metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(OUT_DIR / "manifest.json"))
        log.info("wrote %d synthetic slices to %s in %.1fs", len(manifest["files"]), OUT_DIR, seconds)
