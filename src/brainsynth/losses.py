"""Loss terms of the VAE-GAN. Images are (B, 1, S, S) in [-1, 1]; scores are raw critic outputs (B,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean per-pixel L1 or squared error (scalar)."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "mse":
        return F.mse_loss(recon, target)
    raise ValueError(f"unknown reconstruction loss {kind!r}")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, averaged over the batch (scalar)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def critic_wasserstein(real: torch.Tensor, fake: torch.Tensor, drift: float = 0.0) -> torch.Tensor:
    """WGAN critic loss E[D(fake)] − E[D(real)] + drift·E[D(real)²] (ProGAN's drift keeps scores near 0)."""
    return fake.mean() - real.mean() + drift * real.pow(2).mean()


def critic_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge critic loss E[relu(1 − D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_adversarial(fake: torch.Tensor) -> torch.Tensor:
    """−E[D(G(z))]: the generator's loss for both the Wasserstein and the hinge critic."""
    return -fake.mean()


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, eps: float = 1e-12,
                     alpha: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: E[(‖∇D(x̂)‖₂ − 1)²] at random interpolates x̂ of real and fake (scalar).

    Always computed in float32 with autocast disabled: under reduced precision the double
    backward overflows easily. ``eps`` keeps the norm's gradient finite at zero. ``alpha``
    (B, 1, 1, 1): the interpolation weights, drawn uniformly when not given.
    """
    device_type = real.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        if alpha is None:
            alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mixed = (alpha * real.float() + (1.0 - alpha) * fake.detach().float()).requires_grad_(True)
        scores = critic(mixed, labels)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        norm = torch.sqrt(grad.pow(2).flatten(1).sum(dim=1) + eps)
        return (norm - 1.0).pow(2).mean()
