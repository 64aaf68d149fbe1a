"""Downstream utility of synthetic data: train a small classifier on synthetic images only (TSTR)
and on real training images (TRTR), test both on the real test split.

TSTR close to TRTR means the synthetic images carry the class information a downstream model needs.
The TRTR classifier also grades the generator the other way round ("GAN-test", Shmelkov et al.
2018): the share of samples it assigns to the class they were drawn for, and the same for
reconstructions of test images — a low value there says the decoder loses the class evidence even
when the encoder hands it the image, i.e. a fidelity limit rather than a conditioning one.
The classifier is a small VGG-style CNN with BatchNorm trained with a one-cycle schedule: on the
embedded cohort (64², 3 atrophy grades, chance 0.41) it reaches ~0.75 test accuracy in 10 epochs
(~25 s on 2 CPU cores); a plainer strided CNN stayed at chance there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainsynth.inference import to_unit


class SmallClassifier(nn.Module):
    """Four stages of two 3×3 conv + BatchNorm + ReLU, then 2× max-pool; global average pool,
    dropout, linear. (B, 1, S, S) → (B, n_classes) logits."""

    def __init__(self, n_classes: int, width: int = 8):
        super().__init__()
        layers, channels = [], 1
        for out in (width, 2 * width, 4 * width, 8 * width):
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(channels, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, epochs: int, seed: int, device: torch.device,
                     batch: int = 64, lr: float = 1e-3) -> SmallClassifier:
    """SmallClassifier trained on (train_x, train_y): uint8 (N, S, S) images, (N,) int labels."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SmallClassifier(n_classes).to(device)
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


@torch.no_grad()
def accuracy(model: SmallClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of (N, S, S) uint8 images the (trained) classifier assigns to their label."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(images), 256):
        x = to_unit(torch.from_numpy(np.ascontiguousarray(images[start : start + 256])).unsqueeze(1)).to(device)
        correct += int((model(x).argmax(dim=1).cpu().numpy() == labels[start : start + 256]).sum())
    return correct / max(1, len(images))

