"""One arm of the model-lever protocol (issue #24): train params.yaml with ``--set key=value``
overrides for ``--epochs`` on the embedded cohort (rebuilt in memory, the split of ``dvc repro
prepare``), then score its EMA model on the test split the way evaluate does, with every judge:

* recon PSNR beside the PCA reference with as many components as z has numbers (fitted on the
  training split, the same PSNR function), recon grade read by the CNNs and by the independent judge;
* ``downstream.utility`` with ``--seeds`` classifier seeds: TRTR/TSTR by the project's CNN and by
  the independent judge, GAN-test by both, each use of synthetic slices (mix25 and pretrain here:
  the best uses of #23) and the best one's duplicate-real control;
* blur-matched judges (σ = 1 px, trained and applied on blurred slices): TSTR and GAN-test;
* grade swap: posterior means of test slices decoded with every other grade, read by the judge and
  by the blurred CNN (how often they read the new grade); mean |Δx| in grey levels;
* CSF morphometry (mean over classes, and real-vs-real), in-domain precision/recall, swd, seconds per epoch.

Writes ``OUT/NAME.json`` (and ``OUT/NAME.pt``, the model file, for figures). Logs nothing to MLflow.

    python benchmarks/bench_levers.py --name baseline --threads 1
    python benchmarks/bench_levers.py --name consistency --threads 1 --set loss.consistency_weight=0.1
    python benchmarks/bench_levers.py --name default_seed7 --threads 1 --train-seed 7  # training-seed noise
    python benchmarks/bench_levers.py --table benchmarks/levers   # the table of every arm written so far
    python benchmarks/bench_levers.py --figure --name consistency  # its samples, reconstructions and grade swaps
    python benchmarks/bench_levers.py --regrade --name consistency # its grade-swapped training slices as the synthetic set
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import ndimage

from brainsynth import metrics as M
from brainsynth.checkpoint import save_model_file
from brainsynth.config import load
from brainsynth.data.embedded import build_cohort
from brainsynth.data.splits import split_by_subject, subsample_train_subjects
from brainsynth.downstream import class_scores, penultimate_features, train_classifier, utility
from brainsynth.engine import Trainer
from brainsynth.inference import predict_classes, to_uint8, unit_batches
from brainsynth.judge import train_judge
from brainsynth.loop import fit
from brainsynth.nets import latent_size

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [("recon_psnr", "PSNR"), ("pca_psnr", "PCA"), ("recon_class", "recon cls"), ("judge_recon_class", "recon cls (judge)"),
           ("judge_gan_test", "GAN-test (judge)"), ("gan_test", "GAN-test (CNN)"), ("blur_gan_test", "GAN-test (blur)"),
           ("judge_tstr", "TSTR (judge)"), ("tstr", "TSTR (CNN)"), ("blur_tstr", "TSTR (blur)"), ("augment_gain", "gain (best)"),
           ("augment_gain_vs_duplicate", "gain vs dup"), ("swap_judge", "swap read (judge)"), ("swap_blur", "swap read (blur)"),
           ("morph", "morph"), ("precision", "P"), ("recall", "R"), ("swd", "swd"), ("seconds_per_epoch", "s/epoch")]


def blurred(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(i.astype(np.float32), sigma) for i in images]).round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def grade_swaps(trainer: Trainer, images: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior means of ``images`` decoded with every other grade: (swapped images, their new
    grades, mean |Δx| in grey levels against the decode with the true grade)."""
    vae = trainer.model.ema_vae.eval()
    out, new, deltas = [], [], []
    for start, x in unit_batches(images, trainer.device):
        y = torch.as_tensor(labels[start : start + len(x)], device=trainer.device)
        mu, _ = vae.encode(x, y)
        same = to_uint8(vae.decode(mu, y)).float()
        for shift in range(1, n_classes):
            other = (y + shift) % n_classes
            swapped = to_uint8(vae.decode(mu, other))
            deltas.append((swapped.float() - same).abs().mean(dim=(1, 2, 3)))
            out.append(swapped.squeeze(1).cpu())
            new.append(other.cpu())
    return torch.cat(out).numpy(), torch.cat(new).numpy(), float(torch.cat(deltas).mean())


def balanced(predicted: np.ndarray, labels: np.ndarray) -> float:
    return class_scores(predicted, labels)["balanced_accuracy"]


def run(args) -> None:
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = load(REPO / "params.yaml").with_overrides(overrides, source="--set")
    epochs = args.epochs or cfg.train.epochs
    cohort = build_cohort(cfg.data.embedded, cfg.data.image_size, cfg.seed)
    splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    splits = subsample_train_subjects(cohort.subjects, cohort.labels, splits, cfg.data.train_fraction, cfg.seed)
    (tx, ty), (sx, sy) = [(cohort.images[splits == s], cohort.labels[splits == s]) for s in ("train", "test")]
    k, names, device = len(cohort.class_names), cohort.class_names, torch.device("cpu")
    # --train-seed reruns the training (weights, shuffling, noise) without moving the split or the
    # scoring seeds, so two rows differ only by the training's luck: the noise every lever is read against
    train_cfg = cfg.with_overrides({"seed": args.train_seed}, source="--train-seed") if args.train_seed is not None else cfg
    started = time.perf_counter()
    trainer = Trainer(train_cfg, tx, ty, k, device)
    setup_seconds = time.perf_counter() - started
    seconds: list[float] = []

    def on_epoch(result, _state) -> None:
        seconds.append(result.stats.seconds)
        print(f"{args.name}: epoch {result.stats.epoch}/{epochs} {result.stats.seconds:.0f} s "
              + " ".join(f"{n}={v:.4g}" for n, v in result.stats.computed_losses().items()), flush=True)

    fit(trainer, epochs, on_epoch=on_epoch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model_file(out / f"{args.name}.pt", cfg.model, cfg.data.image_size, k, names, trainer.model.ema_encoder, trainer.model.ema_decoder)

    seeds = [cfg.seed + i for i in range(args.seeds)]
    recon = trainer.reconstruct(sx, sy)
    samples = trainer.sample(sy, cfg.seed + 1)
    swapped, swapped_y, swap_delta = grade_swaps(trainer, sx, sy, k)
    result = utility(tx, ty, lambda labels, seed: trainer.sample(labels, seed), sx, sy, k, cfg.evaluate.utility_epochs, seeds, [0.25], True,
                     device, cfg.evaluate.classifier, cfg.evaluate.judge, graded={"gan_test": (samples, sy), "recon_class": (recon, sy)},
                     class_names=names)
    summary = result.summary()
    blur_tstr, blur_gan, blur_rr, blur_swap, judge_swap = [], [], [], [], []
    btx, bsx = blurred(tx), blurred(sx)
    for seed in seeds:
        real_blur = train_classifier(btx, ty, k, cfg.evaluate.utility_epochs, seed, device, cfg.evaluate.classifier)
        synthetic_blur = train_classifier(blurred(trainer.sample(ty, seed + 1000)), ty, k, cfg.evaluate.utility_epochs, seed, device,
                                          cfg.evaluate.classifier)
        blur_rr.append(balanced(predict_classes(real_blur, bsx), sy))
        blur_gan.append(balanced(predict_classes(real_blur, blurred(samples)), sy))
        blur_tstr.append(balanced(predict_classes(synthetic_blur, bsx), sy))
        blur_swap.append(float((predict_classes(real_blur, blurred(swapped)) == swapped_y).mean()))
        judge_swap.append(float((train_judge(tx, ty, seed, cfg.evaluate.judge).predict(swapped) == swapped_y).mean()))
    csf_fake, csf_test, csf_train = M.csf_fraction(samples), M.csf_fraction(sx), M.csf_fraction(tx)
    real_features = penultimate_features(result.reference, sx)
    pr = M.precision_recall(real_features, penultimate_features(result.reference, samples))

    def mean_std(name: str, values) -> dict[str, float]:
        return {name: float(np.mean(values)), f"{name}_std": float(np.std(values, ddof=1))}

    row = {
        "name": args.name, "overrides": overrides, "train_seed": train_cfg.seed, "epochs": epochs, "latent_numbers": latent_size(cfg.model, cfg.data.image_size),
        "seconds_per_epoch": float(np.mean(seconds)), "setup_seconds": setup_seconds,
        "recon_psnr": M.psnr(sx, recon), "pca_psnr": M.pca_psnr(tx, sx, latent_size(cfg.model, cfg.data.image_size), cfg.seed),
        "recon_class": summary["recon_class_balanced_accuracy"], "recon_class_std": summary["recon_class_balanced_accuracy_std"],
        "judge_recon_class": summary["judge_recon_class_balanced_accuracy"],
        "judge_recon_class_std": summary["judge_recon_class_balanced_accuracy_std"],
        "gan_test": summary["gan_test_balanced_accuracy"], "gan_test_std": summary["gan_test_balanced_accuracy_std"],
        "judge_gan_test": summary["judge_gan_test_balanced_accuracy"], "judge_gan_test_std": summary["judge_gan_test_balanced_accuracy_std"],
        "trtr": summary["trtr_balanced_accuracy_mean"], "tstr": summary["tstr_balanced_accuracy_mean"],
        "tstr_std": summary["tstr_balanced_accuracy_std"], "judge_trtr": summary["judge_trtr_balanced_accuracy_mean"],
        "judge_tstr": summary["judge_tstr_balanced_accuracy_mean"], "judge_tstr_std": summary["judge_tstr_balanced_accuracy_std"],
        "judge_tstr_ratio": summary["judge_tstr_ratio"],
        **{key: summary[key] for key in summary if key.startswith(("gain_", "augment_gain"))},
        "best_use": max(result.uses, key=lambda use: summary[f"gain_{use}_mean"]),
        **mean_std("blur_tstr", blur_tstr), **mean_std("blur_gan_test", blur_gan), **mean_std("blur_trtr", blur_rr),
        **mean_std("swap_blur", blur_swap), **mean_std("swap_judge", judge_swap), "swap_delta_grey": swap_delta,
        "morph": float(np.mean([M.morphometric_distance(csf_fake[sy == c], csf_test[sy == c]) for c in range(k)])),
        "morph_real": float(np.mean([M.morphometric_distance(csf_train[ty == c], csf_test[sy == c]) for c in range(k)])),
        "precision": pr["precision"], "recall": pr["recall"],
        "swd": M.swd(sx, samples, cfg.seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"],
        "minutes": (time.perf_counter() - started) / 60,
    }
    row["augment_gain"], row["augment_gain_vs_duplicate"] = row.pop("augment_gain_mean"), row.pop("augment_gain_vs_duplicate_mean")
    (out / f"{args.name}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))


def figure(folder: Path, name: str) -> Path:
    """``folder/NAME.png``: test slices of each grade (4 per grade), their reconstructions, prior
    samples of the same grades, and each slice re-rendered at every grade, from ``folder/NAME.pt``."""
    from brainsynth.inference import SynthModel
    from brainsynth.viz import labelled_grid

    cfg = load(REPO / "params.yaml")
    model = SynthModel.load(folder / f"{name}.pt")
    cohort = build_cohort(cfg.data.embedded, model.image_size, cfg.seed)
    splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    sx, sy = cohort.images[splits == "test"], cohort.labels[splits == "test"]
    pick = np.concatenate([np.flatnonzero(sy == k)[:: max(1, (sy == k).sum() // 4)][:4] for k in range(model.n_classes)])
    x, y = sx[pick], sy[pick]
    rows = [x, model.reconstruct(x, y), model.sample(y, cfg.seed + 1)]
    labels = ["real (test)", "reconstruction", "sample (same grade)"]
    for k, grade in enumerate(model.class_names):
        rows.append(model.regrade(x, y, np.full(len(y), k)))
        labels.append(f"re-rendered\nas {grade}")
    path = folder / f"{name}.png"
    labelled_grid(rows, labels, path, col_labels=[model.class_names[k] for k in y], title=f"{name}: test slices, reconstructions, samples, grade swaps")
    return path


def score_regrade(folder: Path, name: str, seeds: int) -> dict:
    """Utility of *grade-swapped real anatomy* (issue #24 lever 3, ``brainsynth-generate --from``) as
    the synthetic set, from ``folder/NAME.pt``: each requested slice of grade g is a training slice
    of another grade, drawn at random, re-rendered at g. Same classifiers, seeds and uses as ``run``;
    writes ``folder/NAME+regrade.json``."""
    from brainsynth.inference import SynthModel

    cfg = load(REPO / "params.yaml")
    model = SynthModel.load(folder / f"{name}.pt")
    cohort = build_cohort(cfg.data.embedded, model.image_size, cfg.seed)
    splits = split_by_subject(cohort.subjects, cohort.labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    (tx, ty), (sx, sy) = [(cohort.images[splits == s], cohort.labels[splits == s]) for s in ("train", "test")]
    k = model.n_classes

    def regraded(labels, seed):
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        source = np.array([rng.choice(np.flatnonzero(ty != label)) for label in labels])
        return model.regrade(tx[source], ty[source], labels)

    started = time.perf_counter()
    test_swaps = regraded(sy, cfg.seed + 1)
    result = utility(tx, ty, regraded, sx, sy, k, cfg.evaluate.utility_epochs, [cfg.seed + i for i in range(seeds)], [0.25], True,
                     torch.device("cpu"), cfg.evaluate.classifier, cfg.evaluate.judge, graded={"gan_test": (test_swaps, sy)},
                     class_names=model.class_names)
    summary = result.summary()
    real_features = penultimate_features(result.reference, sx)
    pr = M.precision_recall(real_features, penultimate_features(result.reference, test_swaps))
    row = {"name": f"{name}+regrade", "source": "grade-swapped training slices", "gan_test": summary["gan_test_balanced_accuracy"],
           "gan_test_std": summary["gan_test_balanced_accuracy_std"], "judge_gan_test": summary["judge_gan_test_balanced_accuracy"],
           "judge_gan_test_std": summary["judge_gan_test_balanced_accuracy_std"], "trtr": summary["trtr_balanced_accuracy_mean"],
           "tstr": summary["tstr_balanced_accuracy_mean"], "tstr_std": summary["tstr_balanced_accuracy_std"],
           "judge_trtr": summary["judge_trtr_balanced_accuracy_mean"], "judge_tstr": summary["judge_tstr_balanced_accuracy_mean"],
           "judge_tstr_std": summary["judge_tstr_balanced_accuracy_std"], "judge_tstr_ratio": summary["judge_tstr_ratio"],
           **{key: summary[key] for key in summary if key.startswith(("gain_", "augment_gain"))},
           "best_use": max(result.uses, key=lambda use: summary[f"gain_{use}_mean"]),
           "precision": pr["precision"], "recall": pr["recall"],
           "swd": M.swd(sx, test_swaps, cfg.seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"],
           "minutes": (time.perf_counter() - started) / 60}
    row["augment_gain"], row["augment_gain_vs_duplicate"] = row.pop("augment_gain_mean"), row.pop("augment_gain_vs_duplicate_mean")
    (folder / f"{name}+regrade.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row, indent=1))
    return row


def table(folder: Path) -> None:
    """A markdown table of every arm's JSON in ``folder`` (mean, and ± std where measured over seeds)."""
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    print("| arm | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            std = row.get(f"{key}_std")
            cells.append("–" if value is None else f"{value:.3g}" + (f" ± {std:.2g}" if std is not None else ""))
        print(f"| {row['name']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name")
    parser.add_argument("--epochs", type=int, default=0, help="0 = train.epochs")
    parser.add_argument("--set", action="append", default=[], help="key=value (YAML value), repeatable")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-seed", type=int, help="seed of the training only (default: params.yaml seed, which also draws the split)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "levers"))
    parser.add_argument("--table", help="print the table of the arms in this folder and stop")
    parser.add_argument("--figure", action="store_true", help="draw --name's saved model (OUT/NAME.png) and stop")
    parser.add_argument("--regrade", action="store_true", help="score --name's saved model with grade-swapped training slices as the synthetic set")
    args = parser.parse_args()
    if args.table:
        table(Path(args.table))
        return
    if args.figure:
        print(figure(Path(args.out), args.name))
        return
    if args.regrade:
        if args.threads:
            torch.set_num_threads(args.threads)
        score_regrade(Path(args.out), args.name, args.seeds)
        return
    if not args.name:
        parser.error("--name is required to train an arm")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
