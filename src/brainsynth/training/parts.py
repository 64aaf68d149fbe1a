"""The training step's parts: each optional network of the VAE-GAN's training with its optimiser,
its own update and the terms it adds to the generator loss (StyleGAN2-ADA's phases as data,
``training_loop.py``; MONAI's ``AdversarialTrainer`` taking loss objects).

A part answers these, and the engine asks nothing else (it reads no ``loss.*`` key):

* ``prepare()``: what it needs before the first step (called once, by the trainer's first step);
* ``on(progress)``: does it act at this point of training (in epochs)?
* ``prior_samples`` / ``grade_swaps``: how many of each (× the batch; 0: none) the step's one decoder pass decodes for it;
* ``update(step)``: its own network's update(s) on the step's (detached) batch → named losses, one dict per update;
* ``generator_terms(step, progress)``: its weighted terms of the generator loss;
* ``frozen``: the modules that stay frozen while the generator updates; ``state_dict`` / ``load_state_dict``.

**A new lever is a part class and its builder in ``BUILDERS`` here, with its own nested section of
params.yaml** (``loss.consistency.*``, ``loss.fader.*``) in the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainsynth.classifiers.ensemble import BlurredEnsemble, train_blurred_ensemble
from brainsynth.training import losses
from brainsynth.training.losses import Term


@dataclass
class Step:
    """What one training step decoded, for every part (``Trainer.decode_batch``).

    x (B, 1, S, S) real images in [-1, 1], y (B,); mu, logvar (B, Z) float32; decoded (B + P, 1, S, S):
    the B reconstructions, then the P prior samples, with their labels (B + P,); swapped (W, 1, S, S)
    and swapped_labels (W,): posterior samples decoded with another grade (None without them).
    ``autocast``: the trainer's ``torch.autocast`` arguments.
    """

    x: torch.Tensor
    y: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    decoded: torch.Tensor
    labels: torch.Tensor
    swapped: torch.Tensor | None
    swapped_labels: torch.Tensor | None
    autocast: dict

    @property
    def recon(self) -> torch.Tensor:
        return self.decoded[: self.x.shape[0]]


class Part:
    """The protocol (see the module docstring); the defaults are those of a part without a network."""

    name = ""
    prior_samples = 0.0  # × the batch
    grade_swaps = 0.0
    update_names: tuple[str, ...] = ()  # what ``update`` reports, in order
    generator_names: tuple[str, ...] = ()  # what ``generator_terms`` reports, in order

    def prepare(self) -> None:
        pass

    def on(self, progress: float) -> bool:
        return True

    @property
    def frozen(self) -> tuple[nn.Module, ...]:
        return ()

    def update(self, step: Step) -> list[dict[str, torch.Tensor]]:
        return []

    def generator_terms(self, step: Step, progress: float) -> list[Term]:
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


Update = Callable[[torch.optim.Optimizer, list, torch.Tensor], None]  # the trainer's backward → average over ranks → step


def adam(module: nn.Module, lr: float, betas: tuple[float, float], cuda: bool) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, **({"fused": True} if cuda else {}))


class CriticPart(Part):
    """The Wasserstein critic (gradient penalty, drift, instance noise on all it sees), from
    ``loss.adv_weight`` > 0 and ``loss.adv_start_epoch`` on. It judges real slices against the
    step's reconstructions and ``loss.prior_fraction`` × B prior samples; ``optim.n_critic`` updates
    per step, the last one on the generator's own (detached) decoded batch. Generator term
    ``adv_g``: they must score as real."""

    name = "critic"
    update_names = ("critic", "gp", "w_distance")
    generator_names = ("adv_g",)

    def __init__(self, critic: nn.Module, labels: Callable, loss, optim, decode: Callable[[torch.Tensor, torch.Tensor], Step],
                 apply: Update, cuda: bool):
        self.critic, self.labels, self.decode, self.apply = critic, labels, decode, apply
        self.weight, self.start, self.prior_samples, self.instance_noise = loss.adv_weight, loss.adv_start_epoch, loss.prior_fraction, loss.instance_noise
        self.gp_weight, self.gp_every, self.drift = loss.gp_weight, loss.gp_every, loss.drift_weight
        self.n_critic = optim.n_critic
        self.opt = adam(critic, optim.lr_critic, (optim.critic_beta1, optim.beta2), cuda)
        self.updates = 0  # finished critic updates (loss.gp_every counts these)

    def on(self, progress: float) -> bool:
        return self.weight > 0 and progress >= self.start

    @property
    def frozen(self) -> tuple[nn.Module, ...]:
        return (self.critic,)

    def update(self, step: Step) -> list[dict[str, torch.Tensor]]:
        named = []
        for _ in range(self.n_critic - 1):  # fresh fakes for all but the last update
            with torch.no_grad(), torch.autocast(**step.autocast):
                fresh = self.decode(step.x, step.y, self.prior_samples)
            named.append(self._update_once(step, fresh.decoded, fresh.labels))
        return [*named, self._update_once(step, step.decoded, step.labels)]

    def noisy(self, images: torch.Tensor) -> torch.Tensor:
        """Instance noise (Sønderby et al. 2016, ``loss.instance_noise``) on everything the critic
        sees: real MRI carries acquisition noise a deterministic decoder cannot reproduce, and
        without it the critic wins on that cue alone and pushes the decoder towards periodic textures."""
        sigma = self.instance_noise
        return images + sigma * torch.randn_like(images) if sigma > 0 else images

    def _update_once(self, step: Step, fake: torch.Tensor, fake_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        x, y = step.x, step.y
        real, fake = self.noisy(x), self.noisy(fake.detach())
        b = real.shape[0]
        with torch.autocast(**step.autocast):
            # Real images, reconstructions and prior samples in one call; minibatch statistics stay per set.
            scores = self.critic(torch.cat([real, fake]), self.labels(torch.cat([y, fake_labels])),
                                 set_sizes=(b, *losses.set_sizes(fake.shape[0], b))).float()
        real_scores, fake_scores = scores[:b], scores[b:]
        named = {"critic": losses.critic_wasserstein(real_scores, fake_scores, self.drift)}
        loss = named["critic"]
        if self.gp_weight and self.updates % self.gp_every == 0:
            # Every real image is paired with a fake, prior samples first, then reconstructions; the
            # interpolates are judged under the real image's class (the penalty constrains the
            # critic's input gradient around each real sample). Lazy: scaled by gp_every.
            pool = torch.cat([fake[b:], fake[:b]])[:b]
            named["gp"] = losses.gradient_penalty(lambda images, labels: self.critic(images, self.labels(labels)), real, pool, y)
            loss = loss + (self.gp_weight * self.gp_every) * named["gp"]
        named["w_distance"] = real_scores.mean() - fake_scores.mean()
        self.apply(self.opt, list(self.critic.parameters()), loss)
        self.updates += 1
        return named

    def generator_terms(self, step: Step, progress: float) -> list[Term]:
        with torch.autocast(**step.autocast):
            scores = self.critic(self.noisy(step.decoded), self.labels(step.labels),
                                 set_sizes=losses.set_sizes(step.decoded.shape[0], step.x.shape[0]))
        return [Term("adv_g", losses.generator_adversarial(scores.float()), self.weight)]

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.updates = int(state["updates"])


class ConsistencyPart(Part):
    """Grade consistency (``loss.consistency``; ICAM's frozen classifier, Bass et al. 2020): a frozen
    ensemble of ``members`` slice classifiers trained on the real training slices blurred by
    ``blur`` px (``evaluate.classifier``'s recipe, its own seeds) reads reconstructions, grade-swapped
    reconstructions and prior samples, each as the grade it was decoded with. From the critic's start,
    its weight ramped over ``ramp_epochs``. The ensemble is trained by ``prepare``, before the first
    step (not part of the model or its checkpoints: rebuilt, identically, from the data and the seed)."""

    name = "consistency"
    generator_names = ("grade",)

    def __init__(self, cfg, start: float, prior_fraction: float, train_ensemble: Callable[[], BlurredEnsemble]):
        self.weight, self.ramp, self.start = cfg.weight, cfg.ramp_epochs, start
        self.prior_samples = self.grade_swaps = prior_fraction  # as many swaps as prior samples
        self.train_ensemble = train_ensemble
        self.ensemble: BlurredEnsemble | None = None

    def prepare(self) -> None:
        if self.ensemble is None:
            self.ensemble = self.train_ensemble()

    def on(self, progress: float) -> bool:
        return progress >= self.start

    def generator_terms(self, step: Step, progress: float) -> list[Term]:
        images = torch.cat([step.decoded, step.swapped.to(step.decoded.dtype)])
        with torch.autocast(**step.autocast):
            logits = self.ensemble(images)
        value = losses.classification(logits, torch.cat([step.labels, step.swapped_labels]))
        return [Term("grade", value, self.weight * losses.linear_ramp(progress, self.start, self.ramp))]


class LatentClassifier(nn.Module):
    """The Fader adversary's network (Lample et al. 2017): reads the class from the posterior mean.

    (B, Z) → (B, K) logits
    """

    def __init__(self, latent_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float())


class FaderPart(Part):
    """The Fader adversary (``loss.fader``): a small classifier learns the grade from the batch's
    (detached) posterior means; generator term ``latent_adv``: the encoder leaves it at chance
    (cross-entropy against the uniform distribution: bounded, unlike maximising its loss), so z
    carries no grade and the decoder must take it from y."""

    name = "fader"
    update_names = ("latent_cls",)
    generator_names = ("latent_adv",)

    def __init__(self, cfg, latent_dim: int, n_classes: int, betas: tuple[float, float], apply: Update, cuda: bool):
        self.weight, self.apply = cfg.weight, apply
        self.net = LatentClassifier(latent_dim, n_classes)
        self.opt = adam(self.net, cfg.lr, betas, cuda)

    @property
    def frozen(self) -> tuple[nn.Module, ...]:
        return (self.net,)

    def update(self, step: Step) -> list[dict[str, torch.Tensor]]:
        loss = losses.classification(self.net(step.mu.detach()), step.y)
        self.apply(self.opt, list(self.net.parameters()), loss)
        return [{"latent_cls": loss}]

    def generator_terms(self, step: Step, progress: float) -> list[Term]:
        return [Term("latent_adv", -F.log_softmax(self.net(step.mu), dim=1).mean(), self.weight)]

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


@dataclass
class Context:
    """What a part may be built from: the model (its critic), the training data (N, S, S) uint8 and
    labels (N,), the trainer's decoder pass and update, the device and the memory format."""

    model: nn.Module
    images: np.ndarray
    labels: np.ndarray
    decode: Callable[[torch.Tensor, torch.Tensor], Step]
    apply: Update
    device: torch.device
    memory_format: torch.memory_format

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def critic_part(cfg, c: Context) -> Part:
    return CriticPart(c.model.critic, c.model.labels, cfg.loss, cfg.optim, c.decode, c.apply, c.cuda)


def consistency_part(cfg, c: Context) -> Part | None:
    settings, n_classes = cfg.loss.consistency, c.model.n_classes
    if settings.weight == 0 or n_classes < 2:
        return None

    def train_ensemble() -> BlurredEnsemble:
        ensemble = train_blurred_ensemble(c.images, c.labels, n_classes, settings.members, settings.epochs, settings.blur, cfg.seed, c.device,
                                          cfg.evaluate.classifier)
        return ensemble.to(memory_format=c.memory_format)

    return ConsistencyPart(settings, cfg.loss.adv_start_epoch, cfg.loss.prior_fraction, train_ensemble)


def fader_part(cfg, c: Context) -> Part | None:
    if cfg.loss.fader.weight == 0 or c.model.n_classes < 2:
        return None
    fader = FaderPart(cfg.loss.fader, c.model.latent_dim, c.model.n_classes, (cfg.optim.beta1, cfg.optim.beta2), c.apply, c.cuda)
    fader.net.to(c.device)
    return fader


# The parts, in the order they update and add their generator terms; each builder returns None
# when params.yaml leaves its part off.
BUILDERS: list[Callable[..., Part | None]] = [critic_part, consistency_part, fader_part]


def build_parts(cfg, context: Context) -> list[Part]:
    """The parts params.yaml switches on (``BUILDERS``, in order)."""
    return [part for build in BUILDERS if (part := build(cfg, context)) is not None]
