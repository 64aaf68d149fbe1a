"""Loss terms of the VAE-GAN, and the three losses composed from them (generator, critic, classifier).

Images are (B, 1, S, S) in [-1, 1]; scores are raw critic outputs (B,).

Every term is one function registered here with ``@term``: its name is what the logs, MLflow, the
training-curve panels and ``models/train/history.csv`` show, and ``weight`` names the ``loss.*``
param that scales it (a weight of 0 switches an optional term off). The engine builds the loss of a
phase with ``compose(phase, forward, cfg, progress)`` and never names a term. **A new term is a
function here, its weight in params.yaml and its entry in ``config.LossConfig`` — nothing else.**

A term function takes the phase's forward pass (``GeneratorForward``, ``CriticForward`` or
``ClassifierForward``) and the ``loss`` section, and returns a scalar tensor, or None when it does
not apply at this step (an adversarial term before the critic starts, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

# --- the formulas --------------------------------------------------------------------------------


def reconstruction(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean per-pixel L1 or squared error (scalar)."""
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "mse":
        return F.mse_loss(recon, target)
    raise ValueError(f"unknown reconstruction loss {kind!r}")


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
                  prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) || p(z)) summed over latent dimensions, averaged over the batch (scalar).
    p = N(0, I), or N(prior_mu, diag exp(prior_logvar)) when those are given (all (B, Z))."""
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0).sum(dim=1).mean()


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


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor,
                    limit: float = 1e4) -> torch.Tensor:
    """VQGAN's adaptive adversarial weight (Esser et al. 2021): ‖∇L_rec‖ / ‖∇L_adv‖ at the
    decoder's last layer, clamped to [0, ``limit``] and detached, so that the adversarial gradient
    keeps the reconstruction gradient's size there instead of a fixed weight that lets L1 dominate."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, limit).detach()


def critic_wasserstein(real: torch.Tensor, fake: torch.Tensor, drift: float = 0.0) -> torch.Tensor:
    """WGAN critic loss E[D(fake)] − E[D(real)] + drift·E[D(real)²] (ProGAN's drift keeps scores near 0)."""
    return fake.mean() - real.mean() + drift * real.pow(2).mean()


def critic_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge critic loss E[relu(1 − D(real))] + E[relu(1 + D(fake))]."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_adversarial(fake: torch.Tensor) -> torch.Tensor:
    """−E[D(G(z))]: the generator's loss for both the Wasserstein and the hinge critic."""
    return -fake.mean()


def feature_matching(fake_features: torch.Tensor, real_features: torch.Tensor) -> torch.Tensor:
    """Larsen et al. 2016: mean L1 between critic feature maps (B, C, h, w) of reconstructions and of their inputs."""
    return (fake_features.float() - real_features.float()).abs().mean()


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


CRITIC_OBJECTIVES = {"wgan-gp": lambda real, fake, cfg: critic_wasserstein(real, fake, cfg.drift_weight),
                     "hinge": lambda real, fake, cfg: critic_hinge(real, fake)}  # keyed by loss.gan


# --- what each phase hands its terms ------------------------------------------------------------


def set_sizes(n_decoded: int, n_recon: int) -> tuple[int, ...]:
    """Sizes of the sets in a decoded batch: reconstructions [, prior samples] (the critic keeps
    minibatch statistics per set)."""
    return (n_recon, n_decoded - n_recon) if n_decoded > n_recon else (n_recon,)


@dataclass
class GeneratorForward:
    """One generator step's forward pass (``Trainer.decode_batch``) and access to the frozen critic
    and classifier.

    x (B, 1, S, S), y (B,); mu, logvar (B, Z) float32; decoded (B + P, 1, S, S): the B
    reconstructions, then P prior samples; decoded_labels (B + P,). ``critic(images, labels,
    set_sizes)`` → (scores (N,), mid-level features): instance noise added, no critic gradients;
    None before the critic starts (``loss.adv_start_epoch``). ``classifier(images)`` → logits (N, K);
    None when the class term is off at this step. ``grader(images)`` → logits (N, K) of the frozen
    blurred ensemble (grade consistency), with ``swapped`` (W, 1, S, S): posterior samples decoded
    with another grade ``swapped_labels`` (W,); None when that term is off at this step.
    ``latent_classifier(mu)`` → logits (B, K): the Fader adversary, frozen here; None when off.
    ``spatial_prior``: mu, logvar (B, C·R²) of the learned p(z₂ | z₁, y) at the posterior samples
    (``model.spatial_prior`` learned; None for N(0, I)). ``last_layer``: the decoder's last weight (``loss.adaptive_adv``); ``adaptive_scale`` is set by
    ``compose`` when that weight is computed.
    """

    x: torch.Tensor
    y: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    decoded: torch.Tensor
    decoded_labels: torch.Tensor
    critic: Callable | None = None
    classifier: Callable | None = None
    grader: Callable | None = None
    swapped: torch.Tensor | None = None
    swapped_labels: torch.Tensor | None = None
    latent_classifier: Callable | None = None
    last_layer: torch.Tensor | None = None
    spatial_prior: tuple[torch.Tensor, torch.Tensor] | None = None
    adaptive_scale: torch.Tensor | None = None
    _fake_judged: tuple | None = field(default=None, repr=False)

    @property
    def n_recon(self) -> int:
        return self.x.shape[0]

    @property
    def recon(self) -> torch.Tensor:
        return self.decoded[: self.n_recon]

    def set_sizes(self) -> tuple[int, ...]:
        return set_sizes(self.decoded.shape[0], self.n_recon)

    def fake_judged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The critic's (scores, features) of every decoded image, computed once per step for all terms."""
        if self._fake_judged is None:
            self._fake_judged = self.critic(self.decoded, self.decoded_labels, self.set_sizes())
        return self._fake_judged


@dataclass
class CriticForward:
    """One critic update: ``real`` (B, ...) and ``fake`` (F, ...) as the critic saw them (instance
    noise included), their scores (B,) and (F,), the real labels (B,), the critic as
    ``critic(images, labels)`` → scores, and the index of this critic update (lazy penalties)."""

    real: torch.Tensor
    fake: torch.Tensor
    real_scores: torch.Tensor
    fake_scores: torch.Tensor
    labels: torch.Tensor
    critic: Callable
    update: int


@dataclass
class ClassifierForward:
    """A classifier's logits (B, K) on the real batch (the auxiliary classifier: the images; the
    latent classifier: their posterior means) and its labels (B,)."""

    logits: torch.Tensor
    labels: torch.Tensor


# --- the registry of terms ----------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    name: str
    phase: str  # generator | critic | classifier
    compute: Callable
    weight: str | None = None  # the loss.* param that scales it; None: added unscaled
    optional: bool = True  # False: computed (and reported) even at weight 0
    schedule: Callable | None = None  # (loss cfg, progress in epochs or the critic update) → extra weight factor
    optimised: bool = True  # False: a diagnostic, reported but not part of the loss
    adaptive: bool = False  # with loss.adaptive_adv: weight × losses.adaptive_weight against the weighted "rec" term
    panel: str = "adversarial"  # curve panel: "vae" (≈ 0.1 scale) or "adversarial" (±10)


TERMS: list[Term] = []
PHASES = ("generator", "critic", "classifier", "latent")
TOTALS = {"generator": "loss_g"}  # phases whose weighted total is reported too (the others' is their one term)


def term(name: str, phase: str, weight: str | None = None, **options) -> Callable:
    """Register the decorated function as a loss term of ``phase`` (see the module docstring)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")

    def register(compute: Callable) -> Callable:
        if any(t.name == name for t in TERMS):
            raise ValueError(f"loss term {name!r} is declared twice")
        TERMS.append(Term(name, phase, compute, weight, **options))
        return compute

    return register


def loss_names() -> tuple[str, ...]:
    """Every name a training step can report, in the order of the logs and history.csv."""
    names = []
    for phase in PHASES:
        if phase in TOTALS:
            names.append(TOTALS[phase])
        names += [t.name for t in TERMS if t.phase == phase]
    return tuple(names)


def curve_panels() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The training-curve figure's two loss panels: terms on the VAE's scale and the adversarial ones."""
    vae = tuple(t.name for t in TERMS if t.panel == "vae")
    return (("reconstruction and KL (epoch means)", (TOTALS["generator"], *vae)),
            ("adversarial and classifier terms (epoch means)", tuple(t.name for t in TERMS if t.panel != "vae")))


def compose(phase: str, forward, cfg, step: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted total of ``phase``'s terms and every computed term by name (plus the total,
    for phases in ``TOTALS``). ``cfg``: the ``loss`` section; ``step``: the progress in epochs
    (generator) or the critic update's index (critic), for the terms' schedules. Terms are
    computed and summed in declaration order."""
    total, named = None, {}
    for t in TERMS:
        if t.phase != phase:
            continue
        weight = getattr(cfg, t.weight) if t.weight else None
        if t.optional and weight == 0:
            continue
        value = t.compute(forward, cfg)
        if value is None:
            continue
        named[t.name] = value
        if not t.optimised:
            continue
        if weight is not None and t.schedule is not None:
            weight = weight * t.schedule(cfg, step)
        if t.adaptive and cfg.adaptive_adv and getattr(forward, "last_layer", None) is not None and forward.last_layer.requires_grad:
            forward.adaptive_scale = adaptive_weight(cfg.recon_weight * named["rec"], value, forward.last_layer)
            weight = weight * forward.adaptive_scale
        weighted = value if weight is None else weight * value
        total = weighted if total is None else total + weighted
    if phase in TOTALS:
        named[TOTALS[phase]] = total
    return total, named


# --- generator terms (encoder + decoder), in the order they are summed -------------------------


def kl_warmup(cfg, progress: float) -> float:
    """Linear KL warm-up over ``loss.kl_warmup_epochs``."""
    warmup = cfg.kl_warmup_epochs
    return 1.0 if warmup == 0 else min(1.0, progress / warmup)


@term("rec", "generator", weight="recon_weight", optional=False, panel="vae")
def reconstruction_term(f: GeneratorForward, cfg) -> torch.Tensor:
    """Reconstruction error of the decoded posterior samples (``loss.recon``: l1 | mse)."""
    return reconstruction(f.recon.float(), f.x, cfg.recon)


@term("kl", "generator", weight="kl_weight", optional=False, schedule=kl_warmup, panel="vae")
def kl_term(f: GeneratorForward, cfg) -> torch.Tensor:
    """KL per pixel, on the scale of the per-pixel reconstruction term. With a learned spatial
    prior (``f.spatial_prior``) the spatial part's KL is to p(z₂ | z₁, y) at the posterior sample z₁."""
    if f.spatial_prior is None:
        return kl_divergence(f.mu, f.logvar) / (f.x.shape[-1] * f.x.shape[-2])
    prior_mu, prior_logvar = f.spatial_prior
    vector = f.mu.shape[1] - prior_mu.shape[1]
    kl = kl_divergence(f.mu[:, :vector], f.logvar[:, :vector]) + kl_divergence(f.mu[:, vector:], f.logvar[:, vector:], prior_mu, prior_logvar)
    return kl / (f.x.shape[-1] * f.x.shape[-2])


@term("feature", "generator", weight="feature_weight")
def feature_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """Reconstructions match their inputs in the critic's mid-level feature space (Larsen et al. 2016)."""
    if f.critic is None:
        return None
    _, fake_features = f.fake_judged()
    with torch.no_grad():
        _, real_features = f.critic(f.x, f.y, None)
    return feature_matching(fake_features[: f.n_recon], real_features)


@term("ffl", "generator", weight="focal_frequency_weight", panel="vae")
def focal_frequency_term(f: GeneratorForward, cfg) -> torch.Tensor:
    """Reconstructions match their inputs in the frequencies they render worst (``focal_frequency``)."""
    return focal_frequency(f.recon, f.x)


@term("adv_g", "generator", weight="adv_weight", adaptive=True)
def adversarial_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """Reconstructions and prior samples must score as real."""
    if f.critic is None:
        return None
    scores, _ = f.fake_judged()
    return generator_adversarial(scores.float())


@term("adv_scale", "generator", weight="adv_weight", optimised=False)
def adaptive_scale_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """Diagnostic: the adaptive factor on ``adv_g`` at this step (``loss.adaptive_adv``), before ``loss.adv_weight``."""
    return f.adaptive_scale


@term("cls_g", "generator", weight="class_weight")
def class_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """Prior samples must be recognisable as the class they were drawn for (the auxiliary
    classifier, frozen here: it learns from real images only)."""
    if f.classifier is None:
        return None
    return classification(f.classifier(f.decoded[f.n_recon:]), f.decoded_labels[f.n_recon:])


def consistency_ramp(cfg, progress: float) -> float:
    """Linear ramp over ``loss.consistency_ramp_epochs`` from ``loss.adv_start_epoch``."""
    ramp = cfg.consistency_ramp_epochs
    return 1.0 if ramp == 0 else min(1.0, max(0.0, progress - cfg.adv_start_epoch) / ramp)


@term("grade", "generator", weight="consistency_weight", schedule=consistency_ramp)
def grade_consistency_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """Reconstructions, grade-swapped reconstructions and prior samples must be read as the grade
    they were decoded with by the frozen blurred ensemble (ICAM-style consistency)."""
    if f.grader is None:
        return None
    images, labels = f.decoded, f.decoded_labels
    if f.swapped is not None:
        images, labels = torch.cat([images, f.swapped.to(images.dtype)]), torch.cat([labels, f.swapped_labels])
    return classification(f.grader(images), labels)


@term("latent_adv", "generator", weight="latent_adv_weight")
def latent_adversarial_term(f: GeneratorForward, cfg) -> torch.Tensor | None:
    """The encoder leaves the Fader adversary at chance: cross-entropy of its prediction against the
    uniform distribution over the classes (bounded, unlike maximising its loss)."""
    if f.latent_classifier is None:
        return None
    return -F.log_softmax(f.latent_classifier(f.mu), dim=1).mean()


# --- critic terms --------------------------------------------------------------------------------


@term("critic", "critic")
def critic_term(c: CriticForward, cfg) -> torch.Tensor:
    """The critic's objective for ``loss.gan`` (``CRITIC_OBJECTIVES``)."""
    return CRITIC_OBJECTIVES[cfg.gan](c.real_scores, c.fake_scores, cfg)


def lazy_penalty(cfg, update: float) -> float:
    """A penalty computed on every ``loss.gp_every``-th update is scaled by it, keeping its average strength."""
    return cfg.gp_every


@term("gp", "critic", weight="gp_weight", schedule=lazy_penalty)
def gradient_penalty_term(c: CriticForward, cfg) -> torch.Tensor | None:
    """WGAN-GP on every ``loss.gp_every``-th critic update. Every real image is paired with a fake:
    prior samples first, then reconstructions; the interpolates are judged under the real image's
    class, since the penalty constrains the critic's input gradient around each real sample."""
    if cfg.gan != "wgan-gp" or c.update % cfg.gp_every:
        return None
    b = c.real.shape[0]
    pool = torch.cat([c.fake[b:], c.fake[:b]])[:b]
    return gradient_penalty(c.critic, c.real, pool, c.labels)


@term("w_distance", "critic", optimised=False)
def wasserstein_estimate(c: CriticForward, cfg) -> torch.Tensor:
    """E[D(real)] − E[D(fake)]: the critic's estimate of the Wasserstein distance (a diagnostic)."""
    return c.real_scores.mean() - c.fake_scores.mean()


# --- classifier terms ----------------------------------------------------------------------------


@term("cls_real", "classifier")
def classifier_term(c: ClassifierForward, cfg) -> torch.Tensor:
    """The auxiliary classifier's cross-entropy on real training images."""
    return classification(c.logits, c.labels)


@term("latent_cls", "latent")
def latent_classifier_term(c: ClassifierForward, cfg) -> torch.Tensor:
    """The Fader adversary's cross-entropy on the (detached) posterior means of the real batch."""
    return classification(c.logits, c.labels)
