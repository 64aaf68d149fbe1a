"""Inference with trained networks: image conversions, sampling, reconstruction, classification,
and ``SynthModel``, the trained generator loaded from a model file (``checkpoint.load_model_file``).

Images outside the networks are uint8 arrays (N, S, S); inside they are float (B, 1, S, S) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from brainsynth.checkpoint import load_model_file
from brainsynth.model.vaegan import VAE, Decoder, Encoder


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) → float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] → uint8, same shape and device."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def unit_batches(images: np.ndarray, device: torch.device, batch: int = 256) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, float (b, 1, S, S) in [-1, 1] on ``device``) for consecutive batches of uint8 (N, S, S) images."""
    for start in range(0, len(images), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).unsqueeze(1)
        yield start, to_unit(chunk.to(device))


def autocast_settings(device: torch.device, bf16: bool) -> dict:
    """torch.autocast arguments: bf16 on CUDA when asked, otherwise full precision."""
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16)


def _labels(labels: np.ndarray, start: int, stop: int, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels[start:stop]), dtype=torch.long).to(device)


@torch.no_grad()
def sample_images(vae: VAE, labels, seed: int, device: torch.device, bf16: bool = True, batch: int = 256) -> np.ndarray:
    """Decode prior draws from noise eps ~ N(0, I) drawn from ``seed`` for each label (``VAE.sample``). Returns (N, S, S) uint8."""
    vae.eval()
    labels = np.asarray(labels)
    z = torch.randn(len(labels), vae.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, len(labels), batch):
        with torch.autocast(**autocast_settings(device, bf16)):
            images = vae.sample(z[start : start + batch].to(device), _labels(labels, start, start + batch, device))
        out.append(to_uint8(images).cpu())
    if not out:
        return np.zeros((0, vae.image_size, vae.image_size), np.uint8)
    return torch.cat(out).squeeze(1).numpy()


@torch.no_grad()
def reconstruct_images(vae: VAE, images: np.ndarray, labels: np.ndarray, device: torch.device, bf16: bool = True) -> np.ndarray:
    """``VAE.reconstruct`` (the posterior mean, decoded) in batches. (N, S, S) uint8 → (N, S, S) uint8."""
    vae.eval()
    out = []
    for start, x in unit_batches(images, device):
        with torch.autocast(**autocast_settings(device, bf16)):
            out.append(to_uint8(vae.reconstruct(x, _labels(labels, start, start + len(x), device))).cpu())
    return torch.cat(out).squeeze(1).numpy()


@torch.no_grad()
def predict_classes(classifier: nn.Module, images: np.ndarray, bf16: bool = False) -> np.ndarray:
    """Classes (N,) int64 a classifier assigns to (N, S, S) uint8 images (evaluation mode; the
    classifier's training mode is restored afterwards)."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    predictions = []
    for _, x in unit_batches(images, device):
        with torch.autocast(**autocast_settings(device, bf16)):
            predictions.append(classifier(x).argmax(dim=1).cpu())
    classifier.train(was_training)
    return torch.cat(predictions).numpy() if predictions else np.zeros(0, np.int64)


class SynthModel:
    """A trained generator (EMA weights) loaded from the final model file."""

    def __init__(self, encoder: Encoder, decoder: Decoder, image_size: int, class_names: list[str], n_classes: int,
                 device: torch.device, bf16: bool = True, pixel_mm: float | None = None):
        self.vae = VAE(encoder, decoder)
        self.encoder, self.decoder, self.image_size = encoder, decoder, image_size
        self.class_names, self.n_classes, self.device, self.bf16 = class_names, n_classes, device, bf16
        self.pixel_mm = pixel_mm  # in-plane mm per pixel of the training data (None: unknown)

    def sample(self, labels, seed: int) -> np.ndarray:
        """(N, S, S) uint8 samples of the given classes, deterministic per seed."""
        return sample_images(self.vae, labels, seed, self.device, self.bf16)

    @torch.no_grad()
    def interpolate(self, label: int, seed: int, steps: int = 10) -> np.ndarray:
        """Decode ``steps`` points on the great circle between two z ~ N(0, I) (slerp), one class.
        Returns (steps, S, S) uint8."""
        ends = torch.randn(2, self.vae.latent_dim, generator=torch.Generator().manual_seed(seed))
        a, b = ends[0], ends[1]
        omega = torch.arccos((a / a.norm()).dot(b / b.norm()).clamp(-1.0, 1.0))
        t = torch.linspace(0.0, 1.0, steps)[:, None]
        z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        labels = torch.full((steps,), label, dtype=torch.long, device=self.device)
        self.vae.eval()
        with torch.autocast(**autocast_settings(self.device, self.bf16)):
            return to_uint8(self.vae.sample(z.to(self.device), labels)).cpu().squeeze(1).numpy()

    def reconstruct(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 → posterior-mean reconstructions (N, S, S) uint8 (``VAE.reconstruct``)."""
        return reconstruct_images(self.vae, images, labels, self.device, self.bf16)

    @torch.no_grad()
    def regrade(self, images: np.ndarray, labels: np.ndarray, new_labels: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 slices of grades ``labels`` re-rendered at ``new_labels``: the posterior
        mean of each slice decoded with its new grade (the same anatomy, if the decoder takes the
        grade from y). Returns (N, S, S) uint8."""
        self.vae.eval()
        out = []
        for start, x in unit_batches(images, self.device):
            with torch.autocast(**autocast_settings(self.device, self.bf16)):
                mu, _ = self.vae.encode(x, _labels(labels, start, start + len(x), self.device))
                out.append(to_uint8(self.vae.decode(mu.to(x.dtype), _labels(new_labels, start, start + len(x), self.device))).cpu())
        return torch.cat(out).squeeze(1).numpy() if out else np.zeros((0, self.image_size, self.image_size), np.uint8)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", bf16: bool = True) -> "SynthModel":
        """``bf16``: sample under bf16 autocast on CUDA (an inference choice, not part of the model)."""
        device = torch.device(device)
        stored = load_model_file(path)
        encoder = Encoder(stored.model, stored.image_size, stored.n_classes).to(device)
        decoder = Decoder(stored.model, stored.image_size, stored.n_classes).to(device)
        encoder.load_state_dict(stored.encoder)
        decoder.load_state_dict(stored.decoder)
        return cls(encoder, decoder, stored.image_size, stored.class_names, stored.n_classes, device, bf16, stored.pixel_mm)
