"""Sampling and reconstruction with trained networks, and the final model file.

The final model file (``models/train/model.pt``) holds the EMA encoder/decoder weights, the
validated config and the class names — plain tensors and values only, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainsynth.checkpoint import CheckpointError, load_safe, save_atomic
from brainsynth.config import Config, validate
from brainsynth.nets import Decoder, Encoder

MODEL_FORMAT = "brainsynth-model-v1"


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, S, S) → float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] → uint8, same shape and device."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def _autocast(device: torch.device, bf16: bool) -> dict:
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and bf16)


@torch.no_grad()
def sample_images(decoder: Decoder, labels, seed: int, conditional: bool, device: torch.device, bf16: bool = True, batch: int = 256) -> np.ndarray:
    """Decode z ~ N(0, I) drawn from ``seed`` for each label. Returns (N, S, S) uint8."""
    decoder.eval()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    z = torch.randn(len(labels), decoder.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    for start in range(0, len(labels), batch):
        yb = labels[start : start + batch].to(device) if conditional else None
        with torch.autocast(**_autocast(device, bf16)):
            out.append(to_uint8(decoder(z[start : start + batch].to(device), yb)).cpu())
    if not out:
        return np.zeros((0, 0, 0), np.uint8)
    return torch.cat(out).squeeze(1).numpy()


@torch.no_grad()
def reconstruct_images(encoder: Encoder, decoder: Decoder, images: np.ndarray, labels: np.ndarray, conditional: bool, device: torch.device, bf16: bool = True, batch: int = 256) -> np.ndarray:
    """Encode to the posterior mean and decode. (N, S, S) uint8 → (N, S, S) uint8."""
    encoder.eval()
    decoder.eval()
    out = []
    for start in range(0, len(images), batch):
        xb = to_unit(torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).unsqueeze(1).to(device))
        yb = torch.from_numpy(labels[start : start + batch].astype(np.int64)).to(device) if conditional else None
        with torch.autocast(**_autocast(device, bf16)):
            mu, _ = encoder(xb, yb)
            out.append(to_uint8(decoder(mu, yb)).cpu())
    return torch.cat(out).squeeze(1).numpy()


class SynthModel:
    """A trained generator (EMA weights) loaded from the final model file."""

    def __init__(self, cfg: Config, encoder: Encoder, decoder: Decoder, image_size: int, class_names: list[str], n_classes: int, device: torch.device, run_id: str | None = None):
        self.cfg, self.encoder, self.decoder, self.image_size = cfg, encoder, decoder, image_size
        self.class_names, self.n_classes, self.device, self.run_id = class_names, n_classes, device, run_id

    def sample(self, labels, seed: int) -> np.ndarray:
        return sample_images(self.decoder, labels, seed, self.n_classes > 0, self.device, self.cfg.train.bf16)

    @torch.no_grad()
    def interpolate(self, label: int, seed: int, steps: int = 10) -> np.ndarray:
        """Decode ``steps`` points on the great circle between two z ~ N(0, I) (slerp), one class.
        Returns (steps, S, S) uint8."""
        ends = torch.randn(2, self.decoder.latent_dim, generator=torch.Generator().manual_seed(seed))
        a, b = ends[0], ends[1]
        omega = torch.arccos((a / a.norm()).dot(b / b.norm()).clamp(-1.0, 1.0))
        t = torch.linspace(0.0, 1.0, steps)[:, None]
        z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        labels = torch.full((steps,), label, dtype=torch.long, device=self.device) if self.n_classes > 0 else None
        self.decoder.eval()
        with torch.autocast(**_autocast(self.device, self.cfg.train.bf16)):
            return to_uint8(self.decoder(z.to(self.device), labels)).cpu().squeeze(1).numpy()

    def reconstruct(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return reconstruct_images(self.encoder, self.decoder, images, labels, self.n_classes > 0, self.device, self.cfg.train.bf16)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SynthModel":
        device = torch.device(device)
        payload = load_safe(path, map_location=device)
        if payload.get("format") != MODEL_FORMAT:
            raise CheckpointError(f"{path}: not a brainsynth model file (format {payload.get('format')!r})")
        cfg = validate(payload["config"], source=f"{path} (embedded config)")
        size, n_classes = int(payload["image_size"]), int(payload["n_classes"])
        encoder = Encoder(cfg.model, size, n_classes).to(device)
        decoder = Decoder(cfg.model, size, n_classes).to(device)
        encoder.load_state_dict(payload["encoder"])
        decoder.load_state_dict(payload["decoder"])
        return cls(cfg, encoder, decoder, size, list(payload["class_names"]), n_classes, device, payload.get("mlflow_run_id") or None)


def save_model(path: str | Path, cfg: Config, encoder: Encoder, decoder: Decoder, image_size: int, n_classes: int, class_names: list[str], run_id: str | None) -> None:
    save_atomic(
        {
            "format": MODEL_FORMAT,
            "config": cfg.model_dump(mode="json"),
            "image_size": image_size,
            "n_classes": n_classes,
            "class_names": list(class_names),
            "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
            "mlflow_run_id": run_id or "",
        },
        path,
    )
