"""A fingerprint of what training computes: 2 epochs of a small model on a small embedded cohort,
then the last epoch's losses, the sha256 of every weight and checksums of samples and
reconstructions. Run it in two checkouts (each with its own venv) to check that a refactor changes
no number (#22):

    python benchmarks/training_fingerprint.py '{}'
    python benchmarks/training_fingerprint.py '{"loss.feature_weight": 0.5, "optim.n_critic": 2, "loss.gp_every": 2}'
    python benchmarks/training_fingerprint.py '{"loss.class_weight": 0.5, "optim.grad_clip": 1.0}'
    python benchmarks/training_fingerprint.py '{"loss.gan": "hinge", "model.conditional": false}'

The argument: dotted params.yaml overrides (JSON). One thread, so the result does not depend on
the machine's core count.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from brainsynth.config import load
from brainsynth.data.embedded import build_cohort
from brainsynth.engine import Trainer

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    torch.set_num_threads(1)
    variant = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    cfg = load(REPO / "params.yaml").with_overrides({
        "data.image_size": 32, "data.embedded.n_subjects": 12, "data.embedded.slices_per_subject": 8, "loss.adv_start_epoch": 0.5,
        "loss.kl_warmup_epochs": 1, "train.batch_size": 16, "model.base_channels": 8, "model.max_channels": 32, **variant})
    cohort = build_cohort(cfg.data.embedded, 32, 0)
    trainer = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cpu"))
    for _ in range(2):
        stats = trainer.train_epoch()
    weights = hashlib.sha256()
    for _, value in sorted(trainer.model.state_dict().items()):
        weights.update(value.numpy().tobytes())
    losses = {k: v for k, v in stats.losses.items() if k in stats.reported}
    print(json.dumps({"variant": variant, "losses": losses, "weights_sha256": weights.hexdigest()[:16],
                      "samples_sum": int(trainer.sample([0, 1, 2], 3).sum()),
                      "reconstructions_sum": int(trainer.reconstruct(cohort.images[:5], cohort.labels[:5]).sum())}))


if __name__ == "__main__":
    main()
