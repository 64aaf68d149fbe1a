"""The embedded default cohort: synthetic T1 brain slices built from real anatomy.

nilearn ships the MNI152 2009 T1 template and its grey/white-matter probability maps inside its
wheel, so no download is needed. Each synthetic subject is that anatomy seen through its own
random affine, smooth elastic deformation, simulated atrophy, bias field, contrast and Rician
noise. Atrophy grade is the class label:

* 0 ``healthy``  – severity ~ U(0.00, 0.15)
* 1 ``mild``     – severity ~ U(0.35, 0.60)
* 2 ``moderate`` – severity ~ U(0.70, 1.00)

Atrophy is simulated in two ways that radiologists look for: enlarged ventricles (a radial
displacement field that magnifies the region around the ventricle centroid) and widened sulci
with thinner cortex (grey matter that borders cerebrospinal fluid is replaced by CSF intensity,
more of it as severity grows).

Everything is evaluated only at the output pixel positions of the chosen slices (never on the
full 1 mm volume per subject), which keeps ~2 400 slices at 64x64 to a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainsynth.config import EmbeddedDataConfig

CLASS_NAMES = ["healthy", "mild", "moderate"]
_SEVERITY_RANGE = {0: (0.0, 0.15), 1: (0.35, 0.60), 2: (0.70, 1.00)}
_CSF_INTENSITY = 0.12  # T1 intensity (template scale 0..1) that atrophied tissue takes on
_VENTRICLE_SIGMA_MM = 24.0
_VENTRICLE_MAX_PULL = 0.45  # fractional magnification at the ventricle centre for severity 1


@dataclass(frozen=True)
class Anatomy:
    """Template volumes (voxel grid, 1 mm) and the geometry the generator needs."""

    t1: np.ndarray  # (X, Y, Z) float32, 0 outside the brain
    csf_proximity: np.ndarray  # (X, Y, Z) float32, smoothed CSF-or-background fraction
    grey_matter: np.ndarray  # (X, Y, Z) float32, GM probability
    origin_mm: np.ndarray  # (3,) world position of voxel (0, 0, 0)
    ventricle_centre_mm: np.ndarray  # (3,)
    brain_centre_mm: np.ndarray  # (3,)
    slab_mm: tuple[float, float]  # axial z range where the brain is large


@dataclass(frozen=True)
class Cohort:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    subjects: np.ndarray  # (N,) str
    class_names: list[str]


def load_anatomy(pixel_mm: float, min_area_fraction: float) -> Anatomy:
    """Load the MNI152 templates shipped with nilearn and precompute what every subject shares.

    ``pixel_mm`` sets the anti-aliasing blur: output pixels are much larger than 1 mm voxels.
    """
    from nilearn import datasets  # imported here: nilearn is slow to import and only prepare needs it

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = t1_img.get_fdata(dtype=np.float32)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    affine = t1_img.affine
    if not np.allclose(np.abs(np.diag(affine)[:3]), 1.0):
        raise RuntimeError("the nilearn MNI152 template is expected at 1 mm isotropic resolution")
    origin = affine[:3, 3].astype(np.float64)

    mask = t1 > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask + (~mask)
    csf_proximity = ndimage.gaussian_filter(csf, sigma=1.5).astype(np.float32)

    idx = np.argwhere(mask & (csf > 0.6))
    world = idx + origin
    central = (np.abs(world[:, 0]) < 25) & (world[:, 1] > -45) & (world[:, 1] < 25) & (world[:, 2] > -5) & (world[:, 2] < 35)
    ventricle_centre = world[central].mean(axis=0) if central.any() else np.array([0.0, -15.0, 13.0])

    brain_idx = np.argwhere(mask)
    brain_centre = (brain_idx.min(axis=0) + brain_idx.max(axis=0)) / 2.0 + origin
    area = mask.sum(axis=(0, 1))
    large = np.where(area >= min_area_fraction * area.max())[0]
    slab = (float(large[0] + origin[2]), float(large[-1] + origin[2]))

    blur = max(0.0, 0.45 * pixel_mm - 0.5)
    if blur > 0:
        t1 = ndimage.gaussian_filter(t1, blur)
        gm = ndimage.gaussian_filter(gm, blur)
    return Anatomy(t1, csf_proximity, gm, origin, ventricle_centre, brain_centre, slab)


def _smooth_field(rng: np.random.Generator, points_mm: np.ndarray, extent_mm: np.ndarray, nodes: int, channels: int) -> np.ndarray:
    """A smooth random field (channels, P): N(0, 1) values on a coarse grid, cubic-spline interpolated."""
    grid = rng.standard_normal((channels, nodes, nodes, nodes))
    lo = points_mm.min(axis=1, keepdims=True) - 10.0
    coords = (points_mm - lo) / (extent_mm[:, None] + 20.0) * (nodes - 1)
    return np.stack([ndimage.map_coordinates(grid[c], coords, order=3, mode="nearest") for c in range(channels)])


def _subject_slices(anatomy: Anatomy, cfg: EmbeddedDataConfig, size: int, grade: int, rng: np.random.Generator) -> np.ndarray:
    """All slices of one synthetic subject as float32 (S, size, size) in [0, 1]."""
    n = cfg.slices_per_subject
    pixel = cfg.field_of_view_mm / size
    offsets = (np.arange(size) + 0.5) * pixel - cfg.field_of_view_mm / 2.0
    lo, hi = anatomy.slab_mm
    spacing = (hi - lo) / n
    z = lo + (np.arange(n) + rng.uniform(0.0, 1.0)) * spacing
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    # Output frame: columns run left→right (x), rows run anterior→posterior (−y), one plane per slice.
    plane = np.stack([cols.ravel(), -rows.ravel()])  # (2, H*W)
    points = np.concatenate(
        [np.tile(plane, (1, n)), np.repeat(z, size * size)[None]], axis=0
    ) + np.array([anatomy.brain_centre_mm[0], anatomy.brain_centre_mm[1], 0.0])[:, None]

    # Subject pose: mostly in-plane rotation, small tilts, scale and shift (about the brain centre).
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * cfg.rotation_deg * np.array([0.3, 0.3, 1.0]))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    )
    scale = (1.0 + rng.uniform(-1, 1) * cfg.scale_jitter) * (1.0 + rng.uniform(-1, 1, 3) * cfg.scale_jitter / 3)
    shift = rng.uniform(-4.0, 4.0, 3)
    centre = np.array([anatomy.brain_centre_mm[0], anatomy.brain_centre_mm[1], (lo + hi) / 2])[:, None]
    world = (rot * (1.0 / scale)[None, :]) @ (points - centre) + centre + shift[:, None]

    extent = world.max(axis=1) - world.min(axis=1)
    if cfg.elastic_mm > 0:
        world = world + cfg.elastic_mm * _smooth_field(rng, world, extent, nodes=6, channels=3)

    severity = rng.uniform(*_SEVERITY_RANGE[grade])
    # Enlarged ventricles: sample closer to the centre, which magnifies what lies there.
    rel = world - anatomy.ventricle_centre_mm[:, None]
    pull = _VENTRICLE_MAX_PULL * severity * np.exp(-(rel**2).sum(axis=0) / (2 * _VENTRICLE_SIGMA_MM**2))
    world = anatomy.ventricle_centre_mm[:, None] + rel * (1.0 - pull)

    voxel = world - anatomy.origin_mm[:, None]
    t1 = ndimage.map_coordinates(anatomy.t1, voxel, order=1, mode="constant", cval=0.0)
    csf_near = ndimage.map_coordinates(anatomy.csf_proximity, voxel, order=1, mode="constant", cval=1.0)
    gm = ndimage.map_coordinates(anatomy.grey_matter, voxel, order=1, mode="constant", cval=0.0)

    # Widened sulci / thinner cortex: grey matter close to CSF turns into CSF, more with severity.
    threshold = 1.0 - 0.7 * severity
    eaten = np.clip((csf_near - threshold) / 0.12, 0.0, 1.0) * np.clip(gm * 1.5, 0.0, 1.0)
    brain = t1 > 0.02
    t1 = np.where(brain, t1 * (1 - eaten) + _CSF_INTENSITY * eaten, t1)

    # Scanner: smooth multiplicative bias field, contrast (gamma), Rician noise.
    bias = np.exp(cfg.bias_field * 0.5 * _smooth_field(rng, world, extent, nodes=4, channels=1)[0])
    gamma = float(np.exp(rng.normal(0.0, 0.12)))
    signal = np.clip(t1 * bias, 0.0, None) ** gamma
    sigma = cfg.noise * rng.uniform(0.6, 1.4)
    noisy = np.sqrt((signal + sigma * rng.standard_normal(signal.shape)) ** 2 + (sigma * rng.standard_normal(signal.shape)) ** 2)
    volume = noisy.reshape(n, size, size)
    top = np.percentile(volume[volume > 0.1], 99.5) if (volume > 0.1).any() else 1.0
    return np.clip(volume / top, 0.0, 1.0).astype(np.float32)


def build_cohort(cfg: EmbeddedDataConfig, image_size: int, seed: int, progress: bool = False) -> Cohort:
    """Build the whole synthetic cohort; deterministic for a given seed and config."""
    anatomy = load_anatomy(cfg.field_of_view_mm / image_size, cfg.min_area_fraction)
    rng = np.random.default_rng(seed)
    counts = np.floor(np.asarray(cfg.class_fractions) * cfg.n_subjects).astype(int)
    counts[np.argmax(cfg.class_fractions)] += cfg.n_subjects - counts.sum()
    grades = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), counts))

    iterator = range(cfg.n_subjects)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="synthetic subjects", unit="subj", disable=None)  # a bar on a terminal only: no frames in logs
    images, labels, subjects = [], [], []
    for index in iterator:
        subject_rng = np.random.default_rng([seed, index])
        slices = _subject_slices(anatomy, cfg, image_size, int(grades[index]), subject_rng)
        images.append(np.round(slices * 255.0).astype(np.uint8))
        labels.append(np.full(len(slices), grades[index], dtype=np.int64))
        subjects.append(np.full(len(slices), f"sub-{index:04d}"))
    return Cohort(np.concatenate(images), np.concatenate(labels), np.concatenate(subjects), list(CLASS_NAMES))
