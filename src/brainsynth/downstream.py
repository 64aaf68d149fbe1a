"""Downstream utility of synthetic data: train a slice classifier on synthetic images only (TSTR)
and on real training images (TRTR), test both on the real test split.

TSTR close to TRTR means the synthetic images carry the class information a downstream model needs.
The TRTR classifier also grades the generator the other way round ("GAN-test", Shmelkov et al.
2018): the share of samples it assigns to the class they were drawn for, and the same for
reconstructions of test images — a low value there says the decoder loses the class evidence even
when the encoder hands it the image, i.e. a fidelity limit rather than a conditioning one.
The classifier is ``nets.SliceClassifier`` (BatchNorm, dropout) trained with a one-cycle schedule
(figures in benchmarks/README.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainsynth.inference import predict_classes, to_unit
from brainsynth.nets import SliceClassifier


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, epochs: int, seed: int, device: torch.device,
                     batch: int = 64, lr: float = 1e-3) -> SliceClassifier:
    """SliceClassifier trained on (train_x, train_y): uint8 (N, S, S) images, (N,) int labels."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SliceClassifier(n_classes, width=8, norm="batch", dropout=0.3).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    steps_per_epoch = (len(train_x) + batch - 1) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3 * lr, total_steps=max(1, epochs * steps_per_epoch))
    images = to_unit(torch.from_numpy(np.ascontiguousarray(train_x)).unsqueeze(1)).to(device)
    labels = torch.from_numpy(train_y.astype(np.int64)).to(device)
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(images))).to(device)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = images[idx]
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)  # the generator saw flips too
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of (N, S, S) uint8 images the (trained) classifier assigns to their label."""
    if len(images) == 0:
        return 0.0
    return float((predict_classes(model, images) == np.asarray(labels)).mean())
