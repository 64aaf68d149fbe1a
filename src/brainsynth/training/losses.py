"""The loss formulas of the VAE-GAN, and the autoencoder's own generator terms.

Images are (B, 1, S, S) in [-1, 1]; scores are raw critic outputs (B,). Each formula is a plain
function of tensors (MONAI's losses are the model); who weights and sums them is the training step:
the autoencoder's terms here (``AutoencoderLoss``), each lever's in its part (``training.parts``).

A generator term is a ``Term``: its name is what the logs, MLflow (``train_<name>``), the
training-curve panels and ``models/train/history.csv`` show, its weight the factor it enters the
generator loss with (schedules applied).
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F

# --- the formulas --------------------------------------------------------------------------------


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent dimensions, averaged over the batch. mu, logvar (B, Z) → scalar."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


def focal_frequency(recon: torch.Tensor, target: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss (Jiang et al. 2021, ICCV): squared distance of the orthonormal 2-D
    spectra, each frequency weighted by its own distance to the power ``alpha``, scaled to [0, 1]
    per image and detached, so the frequencies the decoder renders worst (the fine detail an L1
    term averages away) weigh most. (B, 1, S, S) → scalar. Written here because it is ten lines
    on ``torch.fft``; the authors' package adds patch options this model does not use.
    """
    distance = (torch.fft.fft2(recon.float(), norm="ortho") - torch.fft.fft2(target.float(), norm="ortho")).abs().pow(2)
    weight = distance.detach().sqrt().pow(alpha)
    weight = weight / weight.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (weight.dim() - 1)))
    return (weight * distance).mean()


def critic_wasserstein(real: torch.Tensor, fake: torch.Tensor, drift: float = 0.0) -> torch.Tensor:
    """WGAN critic loss E[D(fake)] − E[D(real)] + drift·E[D(real)²] (ProGAN's drift keeps scores near 0)."""
    return fake.mean() - real.mean() + drift * real.pow(2).mean()


def generator_adversarial(fake: torch.Tensor) -> torch.Tensor:
    """−E[D(G(z))]: the generator's loss against the Wasserstein critic."""
    return -fake.mean()


def classification(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K) logits against (B,) class indices, in float32."""
    return F.cross_entropy(logits.float(), labels)


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


def set_sizes(n_decoded: int, n_recon: int) -> tuple[int, ...]:
    """Sizes of the sets in a decoded batch: reconstructions [, prior samples] (the critic keeps
    minibatch statistics per set)."""
    return (n_recon, n_decoded - n_recon) if n_decoded > n_recon else (n_recon,)


# --- the generator's terms -----------------------------------------------------------------------


class Term(NamedTuple):
    """One weighted term of the generator loss: ``weight × value`` enters the total."""

    name: str
    value: torch.Tensor
    weight: float


def weighted_sum(terms: Iterable[Term]) -> tuple[torch.Tensor, list[Term]]:
    """Σ weight × value and the terms, each added as soon as it is computed (an iterator's terms are
    computed one by one): the order in which the graph is built fixes the order in which backward
    accumulates gradients, and so the float rounding."""
    total, seen = None, []
    for term in terms:
        weighted = term.weight * term.value
        total = weighted if total is None else total + weighted
        seen.append(term)
    return total, seen


def curve_panels(names: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The training-curve figure's two loss panels from a trainer's loss names: the total and the
    autoencoder's terms (≈ 0.1 scale), then the critic's and the levers' (±10)."""
    vae = ("loss_g", *AutoencoderLoss.names)
    return (("reconstruction and KL (epoch means)", tuple(n for n in names if n in vae)),
            ("adversarial and lever terms (epoch means)", tuple(n for n in names if n not in vae)))


def linear_ramp(progress: float, start: float, epochs: float) -> float:
    """0 before ``start``, then linearly to 1 over ``epochs`` (0: at once)."""
    return 1.0 if epochs == 0 else min(1.0, max(0.0, progress - start) / epochs)


class AutoencoderLoss:
    """The VAE's own terms, from params.yaml's ``loss`` section: L1 reconstruction of the decoded
    posterior samples (``recon_weight``), KL per pixel (``kl_weight``, warmed up linearly over
    ``kl_warmup_epochs``) and, with ``focal_frequency_weight`` > 0, the focal frequency loss.

    ``terms(step, progress)``: ``step`` holds x and its reconstructions ``step.recon`` (B, 1, S, S)
    and mu, logvar (B, Z) (``training.parts.Step``).
    """

    names = ("rec", "kl", "ffl")

    def __init__(self, cfg):
        self.recon_weight, self.kl_weight, self.kl_warmup = cfg.recon_weight, cfg.kl_weight, cfg.kl_warmup_epochs
        self.focal_frequency_weight = cfg.focal_frequency_weight

    def terms(self, step, progress: float) -> Iterator[Term]:
        # Each term takes its own view of the reconstructions (step.recon): backward then sums
        # their gradients in the order training has always used.
        x, warmup = step.x, 1.0 if self.kl_warmup == 0 else min(1.0, progress / self.kl_warmup)
        yield Term("rec", F.l1_loss(step.recon.float(), x), self.recon_weight)
        yield Term("kl", kl_divergence(step.mu, step.logvar) / (x.shape[-1] * x.shape[-2]), self.kl_weight * warmup)
        if self.focal_frequency_weight:
            yield Term("ffl", focal_frequency(step.recon, x), self.focal_frequency_weight)
