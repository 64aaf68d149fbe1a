"""Rule out measurement artefacts before changing the model (issue #12): is TSTR at chance because
the generator lacks the class, or because the real-trained classifier keys on something no decoder
makes? Uses the trained model (models/train/model.pt) and data/prepared; logs nothing.

1. The real-trained classifier (balanced accuracy) on real test slices that are blurred (Gaussian
   σ in px) or denoised (3×3 median): if these fall to chance, it keys on fine detail/noise.
2. A classifier trained *and* tested on blurred slices: is the grade still present at that
   resolution at all (coarse anatomy: ventricles), i.e. could a smooth generator carry it?
3. Samples decoded from a per-class Gaussian fitted to the encoder's posterior means of the training
   slices (ex-post density estimation, Ghosh et al. 2020) instead of N(0, I): if TSTR jumps, the class
   travels through z and the decoder ignores the label.
4. Prior samples with Rician noise at the real slices' level (σ per image from the background of real
   training slices): is acquisition noise the cue the classifier needs?

    python benchmarks/diagnose_utility.py
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from brainsynth import metrics
from brainsynth.config import load
from brainsynth.data import prepared
from brainsynth.downstream import class_scores, train_classifier
from brainsynth.inference import SynthModel, predict_classes, to_uint8, unit_batches
from brainsynth.paths import MODEL_FILE, PREPARED_DIR

EPOCHS = 8
RECIPE = load("params.yaml").evaluate.classifier  # the downstream classifier evaluate uses


def balanced(classifier, images, labels) -> float:
    return class_scores(predict_classes(classifier, images), labels)["balanced_accuracy"]


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(i.astype(np.float32), sigma) for i in images]).round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def class_gaussian_samples(model: SynthModel, images: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    mus = [model.encoder(x, torch.as_tensor(labels[start : start + len(x)]))[0] for start, x in unit_batches(images, model.device)]
    mu = torch.cat(mus).double().numpy()
    rng = np.random.default_rng(seed)
    out = np.zeros_like(images)
    for k in np.unique(labels):
        members = labels == k
        mean, cov = mu[members].mean(0), np.cov(mu[members], rowvar=False) + 1e-4 * np.eye(mu.shape[1])
        z = torch.from_numpy(rng.multivariate_normal(mean, cov, int(members.sum())).astype(np.float32))
        out[members] = to_uint8(model.decoder(z, torch.full((len(z),), int(k)))).squeeze(1).numpy()
    return out


def background_sigmas(images: np.ndarray) -> np.ndarray:
    """Per-image Rician σ (grey levels) from the background: there the magnitude is Rayleigh, mean σ·√(π/2)."""
    brain, _ = metrics.brain_masks(images)
    outside = ~np.stack([ndimage.binary_dilation(b, iterations=3) for b in brain])
    return np.array([image[mask].astype(np.float64).mean() / np.sqrt(np.pi / 2) for image, mask in zip(images, outside)])


def with_rician_noise(images: np.ndarray, sigmas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = rng.choice(sigmas, len(images))[:, None, None]
    x = images.astype(np.float64)
    noisy = np.sqrt((x + s * rng.standard_normal(x.shape)) ** 2 + (s * rng.standard_normal(x.shape)) ** 2)
    return noisy.round().clip(0, 255).astype(np.uint8)


def main() -> None:
    data = prepared.load(PREPARED_DIR)
    model = SynthModel.load(MODEL_FILE, "cpu")
    (tx, ty), (sx, sy) = data.split("train"), data.split("test")
    k = len(data.class_names)
    device = torch.device("cpu")
    reference = train_classifier(tx, ty, k, EPOCHS, 0, device, RECIPE)
    print(f"chance {1 / k:.3f}; real-trained classifier on real test slices: {balanced(reference, sx, sy):.3f}")
    for sigma in (0.5, 1.0, 1.5):
        print(f"  on test slices blurred σ={sigma}: {balanced(reference, blurred(sx, sigma), sy):.3f}")
    median = np.stack([ndimage.median_filter(i, 3) for i in sx])
    print(f"  on test slices denoised (3×3 median): {balanced(reference, median, sy):.3f}")
    for sigma in (1.0, 2.0):
        coarse = train_classifier(blurred(tx, sigma), ty, k, EPOCHS, 0, device, RECIPE)
        print(f"classifier trained and tested on slices blurred σ={sigma}: {balanced(coarse, blurred(sx, sigma), sy):.3f}")
    prior = model.sample(ty, 1)
    posterior = class_gaussian_samples(model, tx, ty, 1)
    sigmas = background_sigmas(tx)
    print(f"real slices' background noise σ: median {np.median(sigmas):.2f} grey levels")
    noisy = with_rician_noise(prior, sigmas, np.random.default_rng(0))
    for name, images in (("N(0, I) prior", prior), ("per-class Gaussian on μ", posterior), ("N(0, I) prior + Rician noise", noisy)):
        tstr = train_classifier(images, ty, k, EPOCHS, 0, device, RECIPE)
        print(f"samples from {name}: TSTR {balanced(tstr, sx, sy):.3f}, GAN-test {balanced(reference, images, ty):.3f}")


if __name__ == "__main__":
    main()
