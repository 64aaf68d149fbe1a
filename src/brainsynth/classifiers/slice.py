"""The one slice-classifier recipe of the project: ``SliceClassifier`` (BatchNorm, dropout) trained
with AdamW and a one-cycle schedule. Evaluation's downstream classifiers, the filter's ensemble and
the grade-consistency judges are all trained here; ``recipe`` is params.yaml's
``evaluate.classifier`` (width, dropout, batch_size, lr, min_steps — any object with those
attributes). Images are (N, S, S) uint8, labels (N,) int.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn

from brainsynth.inference import predict_classes, to_unit, unit_batches


class SliceClassifier(nn.Module):
    """The project's slice classifier: the downstream-utility classifier (TRTR/TSTR, GAN-test, the
    in-domain feature space), the filter's ensemble and the grade-consistency judges. Four stages of
    two 3×3 conv + BatchNorm + ReLU, then 2× max-pool; global average pool; [dropout]; linear.

    (B, 1, S, S) → (B, K) logits
    """

    def __init__(self, n_classes: int, width: int = 8, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for out in (width, 2 * width, 4 * width, 8 * width):
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes)) if dropout > 0 else nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))



def new_classifier(n_classes: int, recipe) -> SliceClassifier:
    """The downstream classifier, untrained (also what a cached state dict is loaded into)."""
    return SliceClassifier(n_classes, width=recipe.width, dropout=recipe.dropout)


def layout(device: torch.device) -> torch.memory_format:
    """The classifiers' memory format: NHWC on the CPU, where oneDNN runs their narrow convolutions
    at 64² about 3× faster than in NCHW (experiments/results/2026-12-06-lab-notebook.md); NCHW on CUDA."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def budget(n_images: int, epochs: int, recipe) -> int:
    """Updates of ``epochs`` passes over ``n_images``, at least ``recipe.min_steps``: with a few dozen
    updates BatchNorm's running statistics have not settled and the classifier predicts one class in
    evaluation mode (balanced accuracy exactly 1/K at data.train_fraction 0.1 before this floor)."""
    return max(epochs * ((n_images + recipe.batch_size - 1) // recipe.batch_size), recipe.min_steps)


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, n_classes: int, epochs: int, seed: int, device: torch.device,
                     recipe, steps: int | None = None, model: SliceClassifier | None = None) -> SliceClassifier:
    """SliceClassifier trained on (train_x, train_y): uint8 (N, S, S) images, (N,) int labels, for
    ``epochs`` passes, or exactly ``steps`` updates when given (to compare training sets of different
    sizes at an equal optimisation budget). ``model``: continue training this one (fine-tuning,
    with a fresh optimiser and schedule) instead of a new one."""
    batch, lr = recipe.batch_size, recipe.lr
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = new_classifier(n_classes, recipe).to(device) if model is None else model
    model = model.to(memory_format=layout(device))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    total = max(1, steps if steps is not None else epochs * ((len(train_x) + batch - 1) // batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3 * lr, total_steps=total)
    images = to_unit(torch.from_numpy(np.ascontiguousarray(train_x)).unsqueeze(1)).to(device)
    labels = torch.from_numpy(train_y.astype(np.int64)).to(device)
    model.train()
    done = 0
    while done < total:
        order = torch.from_numpy(rng.permutation(len(images))).to(device)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            if done == total:
                break
            done += 1
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


def class_scores(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Balanced accuracy (mean recall over the classes present in ``labels``) and macro-F1 over them."""
    present = np.unique(labels)
    return {"balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0))}


def per_class_recall(predicted: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """{class name: share of that class's images predicted as it} for the classes present."""
    return {name: float((predicted[labels == k] == k).mean()) for k, name in enumerate(class_names) if (labels == k).any()}


@torch.no_grad()
def penultimate_features(model: SliceClassifier, images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 → (N, F) float64: the classifier's globally pooled last feature map, the
    in-domain embedding used for Fréchet distance and precision/recall."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model.features(x).mean(dim=(2, 3)).double().cpu() for _, x in unit_batches(images, device)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))
