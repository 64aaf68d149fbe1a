"""A fingerprint of what training computes: 2 epochs of a small model on a small embedded cohort,
then the last epoch's losses, sha256 digests of the model's and the parts' weights and checksums of
samples and reconstructions. Run it in two checkouts (each with its own venv) to check that a
refactor changes no number:

    python benchmarks/training_fingerprint.py '{}'
    python benchmarks/training_fingerprint.py '{"optim.n_critic": 2, "loss.gp_every": 2}'
    python benchmarks/training_fingerprint.py '{"loss.focal_frequency_weight": 2.0, "optim.grad_clip": 1.0}'
    python benchmarks/training_fingerprint.py '{"model.conditional": false}'

The argument: dotted params.yaml overrides (JSON). One thread, so the result does not depend on
the machine's core count.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from brainsynth.config import load, with_overrides
from brainsynth.data.embedded import build_cohort
from brainsynth.training.engine import Trainer

REPO = Path(__file__).resolve().parents[1]


def digest(state: dict) -> str:
    weights = hashlib.sha256()
    for _, value in sorted(state.items()):
        weights.update(value.numpy().tobytes())
    return weights.hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)
    variant = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    cfg = with_overrides(load(REPO / "params.yaml"), {
        "data.image_size": 32, "data.embedded.n_subjects": 12, "data.embedded.slices_per_subject": 8, "loss.adv_start_epoch": 0.5,
        "loss.kl_warmup_epochs": 1, "train.batch_size": 16, "model.base_channels": 8, "model.max_channels": 32, **variant})
    cohort = build_cohort(cfg.data.embedded, 32, 0)
    trainer = Trainer(cfg, cohort.images, cohort.labels, 3, torch.device("cpu"))
    for _ in range(2):
        stats = trainer.train_epoch()
    parts = {part.name: digest(part.net.state_dict()) for part in trainer.parts if hasattr(part, "net")}
    losses = {k: v for k, v in stats.losses.items() if k in stats.reported}
    print(json.dumps({"variant": variant, "losses": losses, "model_sha256": digest(trainer.model.state_dict()), "parts_sha256": parts,
                      "samples_sum": int(trainer.sample([0, 1, 2], 3).sum()),
                      "reconstructions_sum": int(trainer.reconstruct(cohort.images[:5], cohort.labels[:5]).sum())}, sort_keys=True))


if __name__ == "__main__":
    main()
