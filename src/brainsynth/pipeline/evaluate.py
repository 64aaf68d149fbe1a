"""evaluate: quality of the trained model on the test split → metrics/evaluate.json + figures.

* ``recon_psnr`` / ``recon_ssim``: reconstructions of test images (higher is better).
* ``swd``: sliced Wasserstein distance (×1e3) between samples and an equal number of test images,
  generated with the test set's class mix (lower is better); ``swd_real_baseline`` is the same
  distance between real training and real test images — the floor a perfect model would reach.
* ``ms_ssim_samples`` vs ``ms_ssim_real``: mean MS-SSIM over random pairs (lower = more diverse);
  samples far above real pairs mean mode collapse.
* memorisation audit: ``nn_ratio`` (median generated→train ÷ median test→train nearest-neighbour
  distance; ≈ 1 is healthy, ≪ 1 means copies) and ``memorization_rate`` (share of samples closer to
  a training image than the 1st percentile of test→train distances; ≈ 0.01 for new real images).
* downstream utility: ``tstr_accuracy`` (classifier trained on synthetic images only) vs
  ``trtr_accuracy`` (trained on real training images), both tested on the real test split; the
  real-trained classifier then grades samples (``gan_test_accuracy``: share assigned to the class
  they were drawn for) and reconstructions (``recon_class_accuracy``) against
  ``real_class_accuracy`` on the same real test images.
* ``fid`` / ``kid`` only when Inception weights are already on disk (never downloaded).
Per-class values carry the class name as a suffix.
"""

from __future__ import annotations

import logging
import time

import mlflow
import numpy as np

from brainsynth import metrics as M
from brainsynth.config import Config
from brainsynth.data import prepared
from brainsynth.device import resolve_device
from brainsynth.downstream import accuracy, train_classifier
from brainsynth.files import atomic_dir
from brainsynth.inference import SynthModel
from brainsynth.paths import EVALUATE_DIR, MODEL_FILE, PREPARED_DIR
from brainsynth.pipeline.stage import mlflow_run, upstream_tags, write_metrics
from brainsynth.viz import class_grid, labelled_grid


def run(cfg: Config, log: logging.Logger) -> None:
    started = time.perf_counter()
    with mlflow_run("evaluate", cfg, upstream_tags("train", MODEL_FILE)):
        data = prepared.load(PREPARED_DIR)
        model = SynthModel.load(MODEL_FILE, resolve_device(cfg.train.device), cfg.train.bf16)
        ev = cfg.evaluate
        rng = np.random.default_rng(cfg.seed)
        test_images, test_labels = data.split("test")
        train_images, train_labels = data.split("train")
        n = min(ev.n_images, len(test_images))
        pick = np.sort(rng.choice(len(test_images), n, replace=False))
        real, real_labels = test_images[pick], test_labels[pick]
        log.info("evaluating on %d test images (%d classes)", n, len(data.class_names))
        samples = model.sample(real_labels, cfg.seed + 1)
        recon = model.reconstruct(real, real_labels)

        results: dict[str, float] = {"n_images": n}
        results["recon_psnr"] = M.psnr(real, recon)
        results["recon_ssim"] = M.mean_ssim(real, recon)
        swd_settings = (cfg.swd.patches_per_image, cfg.swd.directions)
        swd = M.swd(real, samples, cfg.seed, *swd_settings)
        results.update(swd)
        if len(train_images) >= n:
            baseline = train_images[np.sort(rng.choice(len(train_images), n, replace=False))]
            results["swd_real_baseline"] = M.swd(real, baseline, cfg.seed, *swd_settings)["swd"]
        results["ms_ssim_samples"] = M.ms_ssim_pairs(samples, ev.n_pairs, cfg.seed)
        results["ms_ssim_real"] = M.ms_ssim_pairs(real, ev.n_pairs, cfg.seed)
        for k, name in enumerate(data.class_names):
            members = real_labels == k
            if members.sum() >= 8 and len(data.class_names) > 1:
                results[f"swd_{name}"] = M.swd(real[members], samples[members], cfg.seed, *swd_settings)["swd"]
                results[f"ms_ssim_samples_{name}"] = M.ms_ssim_pairs(samples[members], ev.n_pairs, cfg.seed)
                results[f"ms_ssim_real_{name}"] = M.ms_ssim_pairs(real[members], ev.n_pairs, cfg.seed)
        audit = M.memorization_audit(samples, real, train_images)
        results.update({k: v for k, v in audit.items() if not k.startswith("_")})
        notes = {}
        if len(data.class_names) > 1 and ev.utility_epochs > 0:
            m = min(ev.utility_images or len(train_images), len(train_images))
            pick_train = np.sort(rng.choice(len(train_images), m, replace=False))
            real_x, real_y = train_images[pick_train], train_labels[pick_train]
            synthetic_x = model.sample(real_y, cfg.seed + 3)  # the real training set's class mix
            classifiers = {name: train_classifier(images, real_y, len(data.class_names), ev.utility_epochs, cfg.seed, model.device)
                           for name, images in (("trtr", real_x), ("tstr", synthetic_x))}
            for name, classifier in classifiers.items():
                results[f"{name}_accuracy"] = accuracy(classifier, test_images, test_labels)
            results["gan_test_accuracy"] = accuracy(classifiers["trtr"], samples, real_labels)
            results["recon_class_accuracy"] = accuracy(classifiers["trtr"], recon, real_labels)
            results["real_class_accuracy"] = accuracy(classifiers["trtr"], real, real_labels)
            results["chance_accuracy"] = float(np.bincount(test_labels).max() / len(test_labels))
        else:
            notes["utility"] = "skipped: needs class labels (more than one class)" if len(data.class_names) <= 1 else "skipped: evaluate.utility_epochs = 0"
        fid, notes["fid"] = M.fid_kid(real, samples)
        results.update(fid)
        results["seconds"] = round(time.perf_counter() - started, 2)

        with atomic_dir(EVALUATE_DIR) as staging:
            class_grid(model.sample, data.class_names, 10, cfg.seed + 2, staging / "samples_per_class.png", "generated samples per class (EMA decoder)")
            m = min(ev.n_recon_examples, n)
            diff = np.abs(real[:m].astype(np.int16) - recon[:m].astype(np.int16)).astype(np.uint8)
            labelled_grid([real[:m], recon[:m], diff], ["input", "reconstruction", "|difference|"], staging / "reconstructions.png",
                          title=f"test reconstructions: PSNR {results['recon_psnr']:.1f} dB, SSIM {results['recon_ssim']:.3f}")
            rows = [real[:10], samples[:10]]
            labelled_grid(rows, ["real (test)", "generated"], staging / "real_vs_generated.png", title=f"SWD {results['swd']:.1f}")
            closest = np.argsort(audit["_generated_distances"])[:8]
            train_match = train_images[audit["_nearest_train_index"][closest]]
            train_match = np.where(audit["_nearest_is_mirrored"][closest][:, None, None], train_match[:, :, ::-1], train_match)
            labelled_grid([samples[closest], train_match], ["generated", "nearest train"], staging / "memorization.png",
                          col_labels=[f"{d:.1f}" for d in audit["_generated_distances"][closest]],
                          title=f"closest generated/train pairs (RMS grey-level distance); nn_ratio {results['nn_ratio']:.2f}, "
                                f"memorization_rate {results['memorization_rate']:.3f}")
            strips = [model.interpolate(k, cfg.seed + 4, steps=10) for k in range(max(len(data.class_names), 1))]
            labelled_grid(strips, data.class_names, staging / "interpolation.png", title="latent interpolation (spherical, between two random z)")
        write_metrics("evaluate", results)
        mlflow.log_metrics(results)
        mlflow.set_tags({f"note_{k}": v for k, v in notes.items()})
        for key, note in notes.items():
            log.info("%s: %s", key, note)
        for png in sorted(EVALUATE_DIR.glob("*.png")):
            mlflow.log_artifact(str(png), artifact_path="figures")
        log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
