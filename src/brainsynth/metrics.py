"""Weight-free image-quality metrics. Images are uint8 arrays (N, S, S) unless stated.

* ``swd``: sliced Wasserstein distance between multi-scale 7×7 patch distributions, as defined
  for ProGAN (Karras et al. 2018). No library ships it for 1-channel images, so it is written
  here following the reference: Laplacian pyramid with the [1, 4, 6, 4, 1]/16 binomial filter
  down to 16×16, random 7×7 neighbourhoods per image per level, per-channel normalisation over
  the descriptors of each set, random unit projections, sorted projections compared, ×1e3.
  Lower is better; 0 means identical patch statistics.
* ``ms_ssim_pairs``: mean MS-SSIM over random pairs within a set (torchmetrics); lower = more
  diverse. Generated-pair values far above real-pair values signal mode collapse.
* ``psnr`` / ``mean_ssim``: reconstruction fidelity of paired images (torchmetrics).

torchmetrics rather than pytorch-msssim: pytorch-msssim asserts room for 4 downsamplings
whatever the number of scales requested, which rules out a sensible window at 64×64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as _ms_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio as _psnr
from torchmetrics.functional.image import structural_similarity_index_measure as _ssim

_MS_SSIM_WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def _float01(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S) → float (N, 1, S, S) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).unsqueeze(1)


def ms_ssim_settings(size: int) -> tuple[int, list[float]]:
    """Gaussian window size and scale weights valid for ``size``-pixel images.

    The standard 11-px window with 5 scales needs images > 160 px. Smaller images use a 7-px
    window (3-px below 32 px) and as many of the standard scales as keep the coarsest scale at
    least twice the window wide, with the standard weights renormalised: 64 px → 7-px window,
    3 scales; 128 px → 11-px window, 3 scales; 256 px → 4 scales; 512 px → 5 scales.
    """
    win = 11 if size >= 128 else 7 if size >= 32 else 3
    scales = 1
    while scales < 5 and size / 2**scales >= 2 * win:
        scales += 1
    weights = _MS_SSIM_WEIGHTS[:scales]
    total = sum(weights)
    return win, [w / total for w in weights]


def ms_ssim_pairs(images: np.ndarray, n_pairs: int, seed: int) -> float:
    """Mean MS-SSIM over ``n_pairs`` random pairs of distinct images of one set."""
    if len(images) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(images), n_pairs)
    second = (first + rng.integers(1, len(images), n_pairs)) % len(images)  # never the same image
    win, weights = ms_ssim_settings(images.shape[-1])
    values = _ms_ssim(_float01(images[first]), _float01(images[second]), data_range=1.0, kernel_size=win, betas=tuple(weights), reduction="none")
    return float(values.mean())


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean per-image PSNR in dB (data range 255, torchmetrics); identical images count as 100 dB."""
    values = _psnr(torch.from_numpy(np.ascontiguousarray(test)).double(), torch.from_numpy(np.ascontiguousarray(reference)).double(),
                   data_range=255.0, reduction="none", dim=(1, 2))
    return float(torch.where(torch.isfinite(values), values, torch.full_like(values, 100.0)).mean())


def pca_psnr(train: np.ndarray, test: np.ndarray, components: int, seed: int = 0) -> float:
    """``psnr`` of (N, S, S) uint8 ``test`` slices rebuilt from ``components`` principal components
    fitted on ``train`` (capped at what the training set allows): the linear reference a latent of
    that many numbers should beat (scikit-learn's PCA, randomised solver where it is faster)."""
    from sklearn.decomposition import PCA

    flat = train.reshape(len(train), -1).astype(np.float64)
    pca = PCA(n_components=min(components, *flat.shape), random_state=seed).fit(flat)
    rebuilt = pca.inverse_transform(pca.transform(test.reshape(len(test), -1).astype(np.float64)))
    return psnr(test, rebuilt.reshape(test.shape).round().clip(0, 255).astype(np.uint8))


def mean_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    win, _ = ms_ssim_settings(reference.shape[-1])
    return float(_ssim(_float01(test), _float01(reference), data_range=1.0, kernel_size=win))


# --- sliced Wasserstein distance ------------------------------------------------------------

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x)[None, None]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _up(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    spread = torch.zeros(n, c, h * 2, w * 2, dtype=x.dtype)
    spread[..., ::2, ::2] = x
    return _blur(spread) * 4.0


def laplacian_pyramid(x: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """(N, 1, S, S) float → band-pass levels at S, S/2, …, and the low-pass level at ``min_size``
    (the ProGAN reference: blur-and-subsample down, zero-insert-and-blur up)."""
    pyramid = [x]
    while pyramid[-1].shape[-1] > min_size:
        pyramid.append(_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _up(pyramid[-1])
    return pyramid


def _patch_positions(n: int, per_image: int, side: int, generator: torch.Generator, size: int = 7):
    """Random top-left corners (N, P) of size×size neighbourhoods."""
    ys = torch.randint(0, side - size + 1, (n, per_image), generator=generator)
    xs = torch.randint(0, side - size + 1, (n, per_image), generator=generator)
    return ys, xs


def _patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int = 7) -> torch.Tensor:
    """The neighbourhoods at (ys, xs) of each image: (N·P, size·size)."""
    n, per_image = ys.shape
    offsets = torch.arange(size)
    rows = (ys[..., None] + offsets)[..., :, None]  # (N, P, size, 1)
    cols = (xs[..., None] + offsets)[..., None, :]  # (N, P, 1, size)
    images = torch.arange(n)[:, None, None, None]
    return level[:, 0][images, rows, cols].reshape(n * per_image, size * size)


def _normalise(descriptors: torch.Tensor) -> torch.Tensor:
    # One channel: ProGAN normalises each colour channel by its mean/std over all descriptors.
    return (descriptors - descriptors.mean()) / descriptors.std().clamp(min=1e-8)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int, generator: torch.Generator, chunk: int = 128) -> float:
    distances = []
    for start in range(0, directions, chunk):
        dirs = torch.randn(a.shape[1], min(chunk, directions - start), generator=generator, dtype=a.dtype)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        # Sort along the last, contiguous axis: many times faster than sorting columns.
        proj_a = torch.sort((a @ dirs).T.contiguous(), dim=1).values
        proj_b = torch.sort((b @ dirs).T.contiguous(), dim=1).values
        distances.append((proj_a - proj_b).abs().mean(dim=1))
    return float(torch.cat(distances).mean())


def swd(real: np.ndarray, fake: np.ndarray, seed: int, patches_per_image: int = 128, directions: int = 512) -> dict[str, float]:
    """Sliced Wasserstein distance per pyramid level (keys ``swd_<res>``) and their mean (``swd``), ×1e3.

    ``real`` and ``fake`` must have the same number of images and size.
    """
    if real.shape != fake.shape:
        raise ValueError(f"swd needs equal-sized sets, got {real.shape} and {fake.shape}")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    levels_real = laplacian_pyramid(_float01(real))
    levels_fake = laplacian_pyramid(_float01(fake))
    for level_real, level_fake in zip(levels_real, levels_fake):
        # The same random positions for both sets (common random numbers): the estimate stays
        # unbiased, its variance drops, and identical sets score exactly 0.
        ys, xs = _patch_positions(len(real), patches_per_image, level_real.shape[-1], generator)
        a = _normalise(_patches(level_real, ys, xs))
        b = _normalise(_patches(level_fake, ys, xs))
        out[f"swd_{level_real.shape[-1]}"] = _sliced_wasserstein(a, b, directions, generator) * 1e3
    out["swd"] = float(np.mean(list(out.values())))
    return out


# --- memorisation audit ---------------------------------------------------------------------


def nearest_distances(queries: np.ndarray, references: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the RMS grey-level distance (0–255) to its nearest reference image and
    that image's index. (N, S, S) uint8 × (M, S, S) uint8 → ((N,) float, (N,) int)."""
    ref = torch.from_numpy(np.ascontiguousarray(references)).reshape(len(references), -1).float()
    pixels = ref.shape[1]
    dists, index = [], []
    for start in range(0, len(queries), batch):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + batch])).reshape(-1, pixels).float()
        d = torch.cdist(q, ref)
        best = d.min(dim=1)
        dists.append(best.values / pixels**0.5)
        index.append(best.indices)
    return torch.cat(dists).numpy(), torch.cat(index).numpy()


def memorization_audit(generated: np.ndarray, held_out: np.ndarray, train: np.ndarray, percentile: float = 1.0) -> dict:
    """Are generated images closer to training images than unseen real images are?

    References are the training images and their left-right mirror images (training flips them).
    * ``nn_ratio`` = median(generated → train) / median(held-out → train): ≈ 1 when samples are as
      far from the training set as new real images; well below 1 means copies.
    * ``memorization_rate``: share of generated images closer to a training image than the
      ``percentile``-th percentile of held-out → train distances (≈ percentile/100 for new real data).
    Also returns the distances and nearest indices (into ``train``) for figures.
    """
    references = np.concatenate([train, train[:, :, ::-1]])
    gen_d, gen_i = nearest_distances(generated, references)
    real_d, _ = nearest_distances(held_out, references)
    threshold = float(np.percentile(real_d, percentile))
    return {
        "nn_ratio": float(np.median(gen_d) / max(np.median(real_d), 1e-8)),
        "memorization_rate": float(np.mean(gen_d < threshold)),
        "nn_generated_train_median": float(np.median(gen_d)),
        "nn_test_train_median": float(np.median(real_d)),
        "memorization_threshold": threshold,
        "_generated_distances": gen_d,
        "_nearest_train_index": gen_i % len(train),
        "_nearest_is_mirrored": gen_i >= len(train),
    }


# --- anatomy: morphometry and an in-domain feature distance ---------------------------------

# Thresholds in grey levels (0–255) after a 1-px Gaussian smoothing, which removes most of the
# acquisition noise (Rician, a few grey levels) while keeping sulci and ventricles.
_BACKGROUND_LEVEL = 30.0
# CSF: darker than this share of the slice's white-matter level (its 90th brain percentile). 0.55
# separates the embedded cohort's atrophy grades best (healthy vs moderate mean CSF fraction 0.8
# pooled std apart; 0.4 → 0.47, 0.7 → 0.11).
_CSF_SHARE_OF_WHITE_MATTER = 0.55


def brain_masks(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain mask (holes filled, so ventricles count as brain) and CSF mask inside it, both
    (N, S, S) bool, for (N, S, S) uint8 T1 slices. CSF is dark inside the brain: below
    ``_CSF_SHARE_OF_WHITE_MATTER`` × the slice's white-matter level (per slice, so bias field and
    contrast differences between scans do not move it). The border ring is excluded from CSF,
    since the brain edge's partial-volume pixels are dark on every slice."""
    from scipy import ndimage

    brains, csfs = [], []
    for image in images:
        smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
        brain = ndimage.binary_fill_holes(ndimage.binary_opening(smooth > _BACKGROUND_LEVEL, iterations=1))
        labelled, n = ndimage.label(brain)
        if n > 1:  # the largest connected piece is the brain; specks of noise are not
            brain = labelled == (np.argmax(np.bincount(labelled.ravel())[1:]) + 1)
        inner = ndimage.binary_erosion(brain, iterations=2)
        white_matter = np.percentile(smooth[brain], 90) if brain.any() else 0.0
        brains.append(brain)
        csfs.append(inner & (smooth < _CSF_SHARE_OF_WHITE_MATTER * white_matter))
    return np.array(brains, dtype=bool).reshape(images.shape), np.array(csfs, dtype=bool).reshape(images.shape)


def csf_fraction(images: np.ndarray) -> np.ndarray:
    """(N,) share of each slice's brain area that is CSF (ventricles, widened sulci): the slice-wise
    morphometric marker of atrophy. Slices without brain give NaN."""
    brain, csf = brain_masks(images)
    area = brain.sum(axis=(1, 2)).astype(np.float64)
    return np.where(area > 0, csf.sum(axis=(1, 2)) / np.maximum(area, 1), np.nan)


def morphometric_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein distance between two samples of CSF fractions (NaNs dropped)."""
    from scipy.stats import wasserstein_distance

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F): the FID
    formula, here in an in-domain feature space (no Inception weights)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # near-singular product: regularise as the FID reference does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root.real))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of feature sets (N, F), (M, F).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision = share of fake points inside the real manifold (realism); recall =
    share of real points inside the fake manifold (coverage). Written here because the library
    implementations either download an extractor (torch-fidelity) or are not installed (piq).
    """
    real_t, fake_t = torch.from_numpy(real).double(), torch.from_numpy(fake).double()

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(min(k + 1, len(x)), dim=1).values  # +1: the point itself is at distance 0

    def inside(points: torch.Tensor, centres: torch.Tensor, centre_radii: torch.Tensor) -> float:
        return float((torch.cdist(points, centres) <= centre_radii[None, :]).any(dim=1).double().mean())

    return {"precision": inside(fake_t, real_t, radii(real_t)), "recall": inside(real_t, fake_t, radii(fake_t))}


# --- optional FID / KID (only with local Inception weights) ---------------------------------

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


def local_inception_weights() -> Path | None:
    """The FID Inception weights if they already sit in torch's hub cache; never downloaded."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    return path if path.is_file() else None


def fid_kid(real: np.ndarray, fake: np.ndarray) -> tuple[dict[str, float], str]:
    """FID and KID (torchmetrics) when Inception weights are present locally, else ({}, why not)."""
    weights = local_inception_weights()
    if weights is None:
        return {}, f"skipped: no local Inception weights ({INCEPTION_WEIGHTS} in {torch.hub.get_dir()}/checkpoints); nothing is downloaded"
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        def rgb(images: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(images))[:, None].repeat(1, 3, 1, 1)

        fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
        kid = KernelInceptionDistance(feature=fid.inception, subset_size=min(100, len(real), len(fake)))
        for metric in (fid, kid):
            metric.update(rgb(real), real=True)
            metric.update(rgb(fake), real=False)
        kid_mean, _ = kid.compute()
        return {"fid": float(fid.compute()), "kid": float(kid_mean)}, "computed"
    except Exception as err:  # torch-fidelity missing, weights of another version, …
        return {}, f"skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
