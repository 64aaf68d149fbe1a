"""The validation objective shared by tuning (objective) and training (per-epoch curve).

objective (``tune.objective``, lower is better):
  swd_recon (default) = swd(samples, val) + tune.recon_weight × recon_mae;  swd;  recon_mae

* ``swd``: realism of prior samples — the ProGAN sliced Wasserstein distance (×1e3) between
  EMA-decoder samples and validation images with the same class mix.
* ``recon_mae``: mean absolute reconstruction error in grey levels (0–255) on validation images.
The VAE loss alone is not used: a blurry VAE minimises it while producing unrealistic samples.
Lower is better.
"""

from __future__ import annotations

import numpy as np

from brainsynth import metrics


DIRECTION = "minimize"  # every objective below is a distance or an error


def validation_metrics(trainer, images: np.ndarray, labels: np.ndarray, n_images: int, seed: int, recon_weight: float,
                       objective: str = "swd_recon") -> dict[str, float]:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(n_images, len(images)), replace=False))
    real, real_labels = images[pick], labels[pick]
    samples = trainer.sample(real_labels, seed)
    recon = trainer.reconstruct(real, real_labels)
    swd = metrics.swd(real, samples, seed, patches_per_image=64, directions=256)["swd"]
    mae = float(np.abs(recon.astype(np.float32) - real.astype(np.float32)).mean())
    value = {"swd_recon": swd + recon_weight * mae, "swd": swd, "recon_mae": mae}[objective]
    return {"val_swd": swd, "val_recon_mae": mae, "val_objective": value}
