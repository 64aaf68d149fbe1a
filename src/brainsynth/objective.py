"""The validation objective: what tuning minimises and what picks train's best epoch.

objective (``tune.objective``, lower is better):
  swd_recon (default) = swd(samples, val) + tune.recon_weight × recon_mae;  swd;  recon_mae;
  swd_recon_class = swd_recon + tune.class_weight × (1 − class fidelity)

* ``swd``: realism of prior samples — the ProGAN sliced Wasserstein distance (×1e3) between
  EMA-decoder samples and validation images with the same class mix, with the ``swd.*`` settings
  that evaluate uses on the test split, so ``val_swd`` and the test ``swd`` share one scale.
* ``recon_mae``: mean absolute reconstruction error in grey levels (0–255) on validation images.
* class fidelity (``swd_recon_class`` only): balanced accuracy with which a frozen classifier,
  trained once on the real training split (``class_judge``, ``evaluate.utility_epochs`` epochs),
  recognises the class each prior sample was drawn for — what a downstream user needs, so tuning
  and the choice of train's best epoch can aim at it.
The VAE loss alone is not used: a blurry VAE minimises it while producing unrealistic samples.

With the auxiliary classifier (``loss.class_weight`` > 0) two diagnostics are added (not part of
the objective): ``val_classifier_accuracy`` (the classifier on real validation images) and
``val_sample_class_accuracy`` (the share of prior samples it assigns to the class they were drawn
for) — the second cannot mean much before the first is well above chance.
"""

from __future__ import annotations

import numpy as np

from brainsynth import metrics
from brainsynth.config import Config
from brainsynth.downstream import class_scores, train_classifier
from brainsynth.inference import predict_classes

DIRECTION = "minimize"  # every objective below is a distance or an error


def class_judge(cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device):
    """The frozen real-trained classifier of ``swd_recon_class`` (None for other objectives or a
    single class). (N, S, S) uint8 training images, (N,) labels."""
    if cfg.tune.objective != "swd_recon_class" or n_classes < 2:
        return None
    return train_classifier(images, labels, n_classes, max(cfg.evaluate.utility_epochs, 1), cfg.seed, device, cfg.evaluate.classifier)


def validation_metrics(trainer, images: np.ndarray, labels: np.ndarray, cfg: Config, judge=None) -> dict[str, float]:
    """Scores of the trainer's EMA model on (up to ``tune.eval_images`` of) the validation images;
    ``judge``: the ``class_judge`` classifier (``swd_recon_class``)."""
    seed = cfg.seed
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(cfg.tune.eval_images, len(images)), replace=False))
    real, real_labels = images[pick], labels[pick]
    samples = trainer.sample(real_labels, seed)
    recon = trainer.reconstruct(real, real_labels)
    swd = metrics.swd(real, samples, seed, cfg.swd.patches_per_image, cfg.swd.directions)["swd"]
    mae = float(np.abs(recon.astype(np.float32) - real.astype(np.float32)).mean())
    scores = {"val_swd": swd, "val_recon_mae": mae}
    class_term = 0.0
    if judge is not None:
        scores["val_sample_class_balanced_accuracy"] = class_scores(predict_classes(judge, samples), real_labels)["balanced_accuracy"]
        class_term = cfg.tune.class_weight * (1.0 - scores["val_sample_class_balanced_accuracy"])
    swd_recon = swd + cfg.tune.recon_weight * mae
    value = {"swd_recon": swd_recon, "swd": swd, "recon_mae": mae, "swd_recon_class": swd_recon + class_term}[cfg.tune.objective]
    scores["val_objective"] = value
    if trainer.model.classifier is not None:
        scores["val_classifier_accuracy"] = float((trainer.classify(real) == real_labels).mean())
        scores["val_sample_class_accuracy"] = float((trainer.classify(samples) == real_labels).mean())
    return scores
