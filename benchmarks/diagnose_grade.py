"""Why do the samples not carry the grade? Four inference-only diagnostics on the trained model
(models/train/model.pt, and models/train/critic.pt for the second) and data/prepared (issue #23):

1. label swap: decode μ(x, y) of real test slices with every other grade y'. Mean |Δx| (grey
   levels) against the decode with the true grade, and how often the independent judge and the
   project's CNN read y' in the swapped image. Δx ≈ 0 and reads ≈ 0: the decoder ignores the label.
2. critic class margin: D(x, y_true) − D(x, y_wrong) on real test slices (mean over wrong labels).
   ≈ 0: the projection term gives the generator no class signal.
3. blur-matched utility: TSTR and GAN-test with CNNs trained on slices blurred by σ = 1 px (coarse
   anatomy only), beside real-vs-real at the same blur. It separates "grade missing" from "image too
   smooth": a smooth generator that has the grade scores near the blurred real-vs-real value.
4. linear probe: logistic regression of the grade from μ (fit on the training split's μ, scored on
   the test split's: the splits are by subject). How much grade lives in z — with the true label
   given to the (conditional) encoder, and with one fixed label for every slice (from the image alone).

Every classifier number is the mean ± std over ``--seeds`` seeds.

    python benchmarks/diagnose_grade.py [--seeds 3] [--n 340]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from brainsynth.checkpoint import load_model_file
from brainsynth.config import load
from brainsynth.data import prepared
from brainsynth.downstream import class_scores, train_classifier
from brainsynth.inference import SynthModel, predict_classes, to_uint8, unit_batches
from brainsynth.judge import train_judge
from brainsynth.nets import Critic
from brainsynth.paths import MODEL_FILE, PREPARED_DIR, TRAIN_DIR

REPO = Path(__file__).resolve().parents[1]


def blurred(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(i.astype(np.float32), sigma) for i in images]).round().clip(0, 255).astype(np.uint8)


def balanced(predicted: np.ndarray, labels: np.ndarray) -> float:
    return class_scores(predicted, labels)["balanced_accuracy"]


def mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


@torch.no_grad()
def posterior_means(model: SynthModel, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = [model.vae.encode(x, torch.as_tensor(labels[s : s + len(x)], device=model.device))[0] for s, x in unit_batches(images, model.device)]
    return torch.cat(out).double().cpu().numpy()


@torch.no_grad()
def decode(model: SynthModel, mu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = torch.from_numpy(mu).float().to(model.device)
    y = torch.as_tensor(labels, dtype=torch.long, device=model.device)
    return to_uint8(model.vae.decode(z, y)).squeeze(1).cpu().numpy()


@torch.no_grad()
def critic_margin(images: np.ndarray, labels: np.ndarray, n_classes: int, model: SynthModel) -> float | None:
    path = TRAIN_DIR / "critic.pt"
    if not path.is_file():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    critic = Critic(load_model_file(MODEL_FILE).model, model.image_size, stored["n_classes"], spectral=stored["spectral"])
    critic.load_state_dict(stored["critic"])
    critic.eval()
    margins = []
    for start, x in unit_batches(images, torch.device("cpu")):
        y = torch.as_tensor(labels[start : start + len(x)])
        true = critic(x, y)
        wrong = torch.stack([critic(x, (y + shift) % n_classes) for shift in range(1, n_classes)]).mean(0)
        margins.append((true - wrong).numpy())
    return float(np.concatenate(margins).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=340, help="test slices used (at most the test split)")
    args = parser.parse_args()
    cfg = load(REPO / "params.yaml")
    data = prepared.load(PREPARED_DIR)
    model = SynthModel.load(MODEL_FILE, "cpu")
    (tx, ty), (sx, sy) = data.split("train"), data.split("test")
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(sx), min(args.n, len(sx)), replace=False))
    sx, sy = sx[pick], sy[pick]
    k = len(data.class_names)
    seeds = [cfg.seed + 100 * i for i in range(args.seeds)]
    epochs, recipe, cpu = cfg.evaluate.utility_epochs, cfg.evaluate.classifier, torch.device("cpu")
    started = time.perf_counter()
    print(f"{len(sx)} test slices, {k} classes (chance {1 / k:.3f}), {len(seeds)} seeds; model {MODEL_FILE}")

    # 1. label swap
    mu = posterior_means(model, sx, sy)
    own = decode(model, mu, sy)
    judges = [train_judge(tx, ty, seed, cfg.evaluate.judge) for seed in seeds]
    cnns = [train_classifier(tx, ty, k, epochs, seed, cpu, recipe) for seed in seeds]
    for shift in range(1, k):
        swapped_y = (sy + shift) % k
        swapped = decode(model, mu, swapped_y)
        delta = np.abs(swapped.astype(np.float32) - own.astype(np.float32)).mean()
        judge_reads = [float((j.predict(swapped) == swapped_y).mean()) for j in judges]
        cnn_reads = [float((predict_classes(c, swapped) == swapped_y).mean()) for c in cnns]
        print(f"1. label swap y → y+{shift}: mean |Δx| {delta:.2f} grey levels; read as the new grade by the judge {mean_std(judge_reads)}, "
              f"by the CNN {mean_std(cnn_reads)} (the original decode: judge {mean_std([float((j.predict(own) == sy).mean()) for j in judges])})")

    # 2. critic class margin
    margin = critic_margin(sx, sy, k, model)
    print("2. critic class margin D(x, y) − D(x, y'):", "no models/train/critic.pt (train it again)" if margin is None else f"{margin:+.4f}")

    # 3. blur-matched utility
    samples = model.sample(ty, cfg.seed + 1)
    gan_samples = model.sample(sy, cfg.seed + 2)
    btx, bsx, bsamples, bgan = blurred(tx), blurred(sx), blurred(samples), blurred(gan_samples)
    rr, tstr, gan, rr_sharp, tstr_sharp, gan_sharp = [], [], [], [], [], []
    for seed in seeds:
        real_blur = train_classifier(btx, ty, k, epochs, seed, cpu, recipe)
        rr.append(balanced(predict_classes(real_blur, bsx), sy))
        gan.append(balanced(predict_classes(real_blur, bgan), sy))
        tstr.append(balanced(predict_classes(train_classifier(bsamples, ty, k, epochs, seed, cpu, recipe), bsx), sy))
    for cnn, seed in zip(cnns, seeds):
        rr_sharp.append(balanced(predict_classes(cnn, sx), sy))
        gan_sharp.append(balanced(predict_classes(cnn, gan_samples), sy))
        tstr_sharp.append(balanced(predict_classes(train_classifier(samples, ty, k, epochs, seed, cpu, recipe), sx), sy))
    print(f"3. blur σ=1 px: real-vs-real {mean_std(rr)}, TSTR {mean_std(tstr)}, GAN-test {mean_std(gan)}  "
          f"(sharp: real-vs-real {mean_std(rr_sharp)}, TSTR {mean_std(tstr_sharp)}, GAN-test {mean_std(gan_sharp)})")

    # 4. linear probe of the grade from mu
    train_mu = posterior_means(model, tx, ty)
    scaler = StandardScaler().fit(train_mu)
    probe = LogisticRegression(max_iter=5000).fit(scaler.transform(train_mu), ty)
    print(f"4. linear probe of the grade from μ (train → test split): balanced accuracy {balanced(probe.predict(scaler.transform(mu)), sy):.3f}"
          " with the true label given to the encoder")
    fixed_train, fixed_test = posterior_means(model, tx, np.zeros_like(ty)), posterior_means(model, sx, np.zeros_like(sy))
    scaler = StandardScaler().fit(fixed_train)
    probe = LogisticRegression(max_iter=5000).fit(scaler.transform(fixed_train), ty)
    print(f"   the same with one fixed label for every slice (the grade from the image alone): {balanced(probe.predict(scaler.transform(fixed_test)), sy):.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
