"""generate: synthetic slices from the trained model → data/synthetic/ (PNG per class, optional NIfTI
stacks, manifest.json), when ``generate.enabled``, otherwise an empty folder with a manifest saying so.
With ``generate.oversample`` > 1 it is the filtered export (``brainsynth.classifiers.filtering``: its held-out
ensemble trained on data/prepared's training split, the recipe of ``evaluate.filter``).
The same export is available outside DVC as ``brainsynth-generate``."""

from __future__ import annotations

import json
import logging
import time

import mlflow

from brainsynth.classifiers.filtering import Selection, ensemble_from_prepared
from brainsynth.config import Config
from brainsynth.device import resolve_device
from brainsynth.export import export, n_images
from brainsynth.files import atomic_dir
from brainsynth.inference import SynthModel
from brainsynth.paths import MODEL_FILE, PREPARED_DIR, SYNTHETIC_DIR
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics


def run(cfg: Config, log: logging.Logger) -> None:
    started = time.perf_counter()
    with mlflow_run("generate", cfg, upstream_tags("train", MODEL_FILE)):
        if not cfg.generate.enabled:
            with atomic_dir(SYNTHETIC_DIR) as staging:
                (staging / "manifest.json").write_text(json.dumps({"enabled": False, "files": []}, indent=2) + "\n")
            write_metrics("generate", {"generate": {"n_images": 0}})
            log.info("generate.enabled is false: nothing generated (dvc exp run -S generate.enabled=true to export)")
            return
        model = SynthModel.load(MODEL_FILE, resolve_device(cfg.train.device), cfg.train.bf16)
        selection = None
        if cfg.generate.oversample > 1:
            flt = cfg.evaluate.filter
            log.info("filtered export: training the held-out ensemble (%d members) on %s", flt.members, PREPARED_DIR)
            ensemble, trained_on = ensemble_from_prepared(PREPARED_DIR, flt.members, flt.epochs, cfg.seed, model.device, cfg.evaluate.classifier)
            selection = Selection(ensemble, cfg.generate.oversample, cfg.generate.keep, {**trained_on, "seed": cfg.seed})
        # force: data/synthetic is a DVC output, replaced whole
        manifest = export(model, SYNTHETIC_DIR, cfg.generate.n_per_class, cfg.seed, cfg.generate.nifti, str(MODEL_FILE), MODEL_FILE, force=True,
                          selection=selection)
        seconds = time.perf_counter() - started
        metrics = {"enabled": 1, "n_images": n_images(manifest), "seconds": round(seconds, 2)}
        write_metrics("generate", {"generate": {"n_images": metrics["n_images"]}})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(SYNTHETIC_DIR / "manifest.json"))
        log.info("wrote %d synthetic slices to %s in %.1fs", n_images(manifest), SYNTHETIC_DIR, seconds)
