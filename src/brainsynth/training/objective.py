"""The validation objective: what tuning minimises and what picks train's best epoch.

objective (``tune.objective``, lower is better):
  swd_recon (default) = swd(samples, val) + tune.recon_weight × recon_mae;  swd;  recon_mae.

* ``swd``: realism of prior samples — the ProGAN sliced Wasserstein distance (×1e3) between
  EMA-decoder samples and validation images with the same class mix, with the ``swd.*`` settings
  that evaluate uses on the test split, so ``val_swd`` and the test ``swd`` share one scale.
* ``recon_mae``: mean absolute reconstruction error in grey levels (0–255) on validation images.
The VAE loss alone is not used: a blurry VAE minimises it while producing unrealistic samples.
"""

from __future__ import annotations

import numpy as np

from brainsynth import metrics
from brainsynth.config import Config

DIRECTION = "minimize"  # every objective below is a distance or an error


def validation_metrics(trainer, images: np.ndarray, labels: np.ndarray, cfg: Config) -> dict[str, float]:
    """Scores of the trainer's EMA model on (up to ``tune.eval_images`` of) the validation images."""
    seed = cfg.seed
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(cfg.tune.eval_images, len(images)), replace=False))
    real, real_labels = images[pick], labels[pick]
    samples = trainer.sample(real_labels, seed)
    recon = trainer.reconstruct(real, real_labels)
    swd = metrics.swd(real, samples, seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"]
    mae = float(np.abs(recon.astype(np.float32) - real.astype(np.float32)).mean())
    swd_recon = swd + cfg.tune.recon_weight * mae
    value = {"swd_recon": swd_recon, "swd": swd, "recon_mae": mae}[cfg.tune.objective]
    return {"val_swd": swd, "val_recon_mae": mae, "val_objective": value}
