"""Frozen classifier ensembles for the CPU: blur as two matrix products, BatchNorm folded into the
convolutions, M members of one architecture run as one network of grouped convolutions
(``side_by_side``), and the blurred ensemble of the grade-consistency loss with its training
(``train_blurred_ensemble``).

Images are (B, 1, S, S) in [-1, 1] unless a function says uint8.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from brainsynth.classifiers.slice import train_classifier
from brainsynth.inference import to_unit

ENSEMBLE_SEED_OFFSET = 15_485_863  # the members' seeds: apart from the evaluation's (seed + i) and the judge's


def gaussian_blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) matrix G such that G @ X @ G.T is the (size, size) image X blurred by a Gaussian of
    ``sigma`` px with reflected borders: torchvision's ``gaussian_blur`` with its kernel of 2⌈3σ⌉ + 1
    taps, to float rounding. Why not that function: it is a one-channel 7×7 convolution, which
    oneDNN runs slowly on the CPU (its backward alone was 3 % of a training step); the blur is
    separable and the images are small, so two (S × S) matrix products do it for ~1/30 of the time."""
    radius = math.ceil(3 * sigma)
    if radius >= size:
        raise ValueError(f"a blur of sigma {sigma} px needs images larger than {radius} px, got {size}")
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    taps /= taps.sum()
    rows = torch.arange(size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for weight, offset in zip(taps, range(-radius, radius + 1)):
        columns = (rows + offset).abs()  # reflect at 0 ...
        columns = torch.where(columns >= size, 2 * (size - 1) - columns, columns)  # ... and at size - 1
        matrix.index_put_((rows, columns), weight.expand(size), accumulate=True)
    return matrix.float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, S, S) → the same, blurred by ``sigma`` px with reflected borders (0: unchanged)."""
    if sigma <= 0:
        return x
    matrix = gaussian_blur_matrix(x.shape[-1], sigma).to(x.device, x.dtype)
    return matrix @ x @ matrix.T


def fold_batch_norm(classifier: nn.Module) -> nn.Module:
    """An evaluation-mode copy of a ``SliceClassifier`` with each BatchNorm folded into the
    convolution before it (torch's ``fuse_conv_bn_eval``): the same function to float rounding,
    one pass over the activations less per layer. For frozen classifiers only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(classifier).eval()
    layers = list(folded.features)
    for index in range(len(layers) - 1):
        if isinstance(layers[index], nn.Conv2d) and isinstance(layers[index + 1], nn.BatchNorm2d):
            layers[index], layers[index + 1] = fuse_conv_bn_eval(layers[index], layers[index + 1]), nn.Identity()
    folded.features = nn.Sequential(*layers)
    return folded


def side_by_side(classifiers: list[nn.Module]) -> nn.Sequential:
    """One network computing the mean logits of M frozen ``SliceClassifier``s of one architecture
    (BatchNorm folded, evaluation mode): the first convolution's filters stacked, every later one
    grouped (groups = M), the heads as one linear layer over the concatenated pooled features.
    The same function to float rounding, but one call of M× wider layers instead of M calls of
    narrow ones, which oneDNN runs at a fraction of its speed on the CPU.

    (B, 1, S, S) → (B, K)
    """
    folded = [fold_batch_norm(c) for c in classifiers]
    count = len(folded)
    layers: list[nn.Module] = []
    for index, layer in enumerate(folded[0].features):
        if isinstance(layer, nn.Conv2d):
            convs = [c.features[index] for c in folded]
            groups = 1 if layer.in_channels == 1 else count
            merged = nn.Conv2d(layer.in_channels * (1 if groups == 1 else count), layer.out_channels * count, layer.kernel_size,
                               padding=layer.padding, groups=groups)
            merged.weight.data.copy_(torch.cat([c.weight for c in convs]))
            merged.bias.data.copy_(torch.cat([c.bias for c in convs]))
            layers.append(merged)
        elif not isinstance(layer, nn.Identity):
            layers.append(copy.deepcopy(layer))
    heads = [c.head[-1] if isinstance(c.head, nn.Sequential) else c.head for c in folded]  # dropout: identity when frozen
    head = nn.Linear(heads[0].in_features * count, heads[0].out_features)
    head.weight.data.copy_(torch.cat([h.weight for h in heads], dim=1) / count)
    head.bias.data.copy_(torch.stack([h.bias for h in heads]).mean(dim=0))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


class BlurredEnsemble(nn.Module):
    """Frozen grade judges for the consistency loss (ICAM's frozen classifier, Bass et al. 2020):
    classifiers trained on real slices blurred by ``sigma`` px, applied to images blurred the same
    way, logits averaged. The blur keeps them on coarse anatomy (ventricles, CSF), so their
    gradient moves anatomy rather than inventing pixel texture. Never trained here; the members
    run as one network (``side_by_side``).

    (B, 1, S, S) in [-1, 1] → (B, K) logits
    """

    def __init__(self, members: list[nn.Module], sigma: float):
        super().__init__()
        self.net = side_by_side(members).eval().requires_grad_(False)
        self.sigma = sigma

    def train(self, mode: bool = True) -> "BlurredEnsemble":
        return super().train(False)  # frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(gaussian_blur(x, self.sigma)).float()


def train_blurred_ensemble(images: np.ndarray, labels: np.ndarray, n_classes: int, members: int, epochs: int, sigma: float, seed: int,
                           device: torch.device, recipe) -> BlurredEnsemble:
    """``members`` classifiers of the project's recipe trained on the (N, S, S) uint8 ``images``
    blurred by ``sigma`` px, member k with seed ``seed + ENSEMBLE_SEED_OFFSET·(k + 1)``, as one frozen
    ``BlurredEnsemble``. Training the members leaves torch's global random stream as it was found;
    building the side-by-side network then draws from it (its layers' initial weights, overwritten at
    once by the members'), as it always has: models trained with the ensemble depend on that draw."""
    unit = to_unit(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float())
    blurred = ((gaussian_blur(unit, sigma) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    rng_state = torch.get_rng_state()
    trained = [train_classifier(blurred, labels, n_classes, epochs, seed + ENSEMBLE_SEED_OFFSET * (k + 1), device, recipe)
               for k in range(members)]
    torch.set_rng_state(rng_state)
    return BlurredEnsemble(trained, sigma).to(device)
