"""Anatomy and utility against training budget, and the ablation of model options: train one config
(params.yaml with ``--set key=value`` overrides) and score its EMA model on the test split every
``--eval-every`` epochs: recon PSNR, recon class accuracy, GAN-test, balanced TSTR (one seed), CSF
morphometric distance (mean over classes, and real-vs-real), in-domain precision/recall, swd.

Data overrides (``--set data.…``) rebuild the embedded cohort in memory; otherwise the prepared
split in data/prepared is used (``dvc repro prepare`` first). Logs nothing to MLflow.

    python benchmarks/bench_utility_curve.py --epochs 30 --eval-every 5 --out curve.json
    python benchmarks/bench_utility_curve.py --epochs 15 --eval-every 15 --set model.class_norm=true
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from brainsynth import metrics as M
from brainsynth.config import load
from brainsynth.data import prepared
from brainsynth.data.embedded import build_cohort
from brainsynth.data.splits import split_by_subject, subsample_train_subjects
from brainsynth.device import resolve_device
from brainsynth.loop import EpochResult, RunState, fit
from brainsynth.downstream import class_scores, penultimate_features, train_classifier
from brainsynth.engine import Trainer
from brainsynth.inference import predict_classes
from brainsynth.paths import PREPARED_DIR

REPO = Path(__file__).resolve().parents[1]


def load_split(cfg, rebuild: bool):
    """Splits of the cohort: rebuilt in memory when data params were overridden, else data/prepared."""
    if cfg.data.source == "embedded" and rebuild:
        cohort = build_cohort(cfg.data.embedded, cfg.data.image_size, cfg.seed)
        splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
        splits = subsample_train_subjects(cohort.subjects, cohort.labels, splits, cfg.data.train_fraction, cfg.seed)
        images, labels, names = cohort.images, cohort.labels, cohort.class_names
    else:
        data = prepared.load(REPO / PREPARED_DIR)
        images, labels, splits, names = data.images, data.labels, data.splits, data.class_names
    return {s: (images[splits == s], labels[splits == s]) for s in ("train", "val", "test")}, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=0, help="0 = train.epochs")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="key=value (YAML value), repeatable")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg_overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load(REPO / "params.yaml").with_overrides(cfg_overrides, source="--set")
    epochs = args.epochs or cfg.train.epochs
    splits, names = load_split(cfg, rebuild=any(k.startswith("data.") for k in cfg_overrides))
    (tx, ty), (sx, sy) = splits["train"], splits["test"]
    device = resolve_device(cfg.train.device)  # CUDA when there is one (train.device: auto)
    reference = train_classifier(tx, ty, len(names), cfg.evaluate.utility_epochs, cfg.seed, device, cfg.evaluate.classifier)
    real_features = penultimate_features(reference, sx)
    rr = M.precision_recall(penultimate_features(reference, tx[: len(sx)]), real_features)
    csf_train, csf_test = M.csf_fraction(tx), M.csf_fraction(sx)
    morph_rr = np.mean([M.morphometric_distance(csf_train[ty == k], csf_test[sy == k]) for k in range(len(names))])
    trtr = class_scores(predict_classes(reference, sx), sy)["balanced_accuracy"]
    print(f"config {cfg_overrides}; trtr balanced {trtr:.3f}; real-vs-real precision {rr['precision']:.3f} recall {rr['recall']:.3f} "
          f"morph {morph_rr:.4f}", flush=True)
    trainer = Trainer(cfg, tx, ty, len(names), device)
    rows, started = [], time.perf_counter()

    def score(result: EpochResult, _: RunState) -> None:
        epoch = result.stats.epoch
        if epoch % args.eval_every and epoch != epochs:
            return
        samples = trainer.sample(sy, cfg.seed + 1)
        recon = trainer.reconstruct(sx, sy)
        synthetic = trainer.sample(ty, cfg.seed + 3)
        tstr = train_classifier(synthetic, ty, len(names), cfg.evaluate.utility_epochs, cfg.seed, device, cfg.evaluate.classifier)
        csf_fake = M.csf_fraction(samples)
        pr = M.precision_recall(real_features, penultimate_features(reference, samples))
        row = {
            "epoch": epoch, "minutes": round((time.perf_counter() - started) / 60, 1),
            "recon_psnr": M.psnr(sx, recon),
            "recon_class_bal": class_scores(predict_classes(reference, recon), sy)["balanced_accuracy"],
            "gan_test_bal": class_scores(predict_classes(reference, samples), sy)["balanced_accuracy"],
            "tstr_bal": class_scores(predict_classes(tstr, sx), sy)["balanced_accuracy"],
            "trtr_bal": trtr,
            "morph": float(np.mean([M.morphometric_distance(csf_fake[sy == k], csf_test[sy == k]) for k in range(len(names))])),
            "morph_real": float(morph_rr),
            "precision": pr["precision"], "recall": pr["recall"],
            "swd": M.swd(sx, samples, cfg.seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"],
        }
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    fit(trainer, epochs, on_epoch=score)
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": cfg_overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
