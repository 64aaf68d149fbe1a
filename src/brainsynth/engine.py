"""The training engine: one VAE-GAN, its optimisers, EMA copy, checkpoints and the training step.

Read it top to bottom: ``Trainer.train_epoch`` is the whole loop. The same code runs on CPU (tests)
and CUDA (bf16 autocast, fused Adam, optional channels_last, optional torch.compile of encoder/decoder).

Design choices that matter for speed: the prepared uint8 images live on the training device once
and batches are gathered by index there (no per-item decoding, no DataLoader); losses are
accumulated in a device tensor and read back only every ``train.log_every`` steps and at epoch end,
so the hot loop never synchronises with the host.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainsynth import losses
from brainsynth.checkpoint import load_safe, save_atomic
from brainsynth.config import Config
from brainsynth.inference import reconstruct_images, sample_images, to_unit
from brainsynth.nets import Critic, Decoder, Encoder, SliceClassifier

# Per-step quantities accumulated on the device: generator side, then critic, then classifier.
# cls_g: the auxiliary classifier's cross-entropy on prior samples (against the class they were
# drawn for); cls_real: its cross-entropy on real training images (how well it has learnt).
LOSS_NAMES = ("loss_g", "rec", "kl", "adv_g", "cls_g", "critic", "gp", "w_distance", "cls_real")
_CRITIC_SLOTS = slice(5, 8)


class DivergenceError(RuntimeError):
    """Raised when a loss becomes NaN/inf; the last good checkpoint is left untouched."""


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


class VAEGAN(nn.Module):
    """Encoder + decoder/generator + critic, with an EMA copy of encoder and decoder for sampling,
    and (``loss.class_weight`` > 0 with labels) the auxiliary classifier."""

    def __init__(self, cfg: Config, image_size: int, n_classes: int):
        super().__init__()
        self.n_classes = n_classes if cfg.model.conditional and n_classes > 1 else 0
        self.encoder = Encoder(cfg.model, image_size, self.n_classes)
        self.decoder = Decoder(cfg.model, image_size, self.n_classes)
        self.critic = Critic(cfg.model, image_size, self.n_classes, spectral=cfg.loss.gan == "hinge")
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_decoder = copy.deepcopy(self.decoder).requires_grad_(False)
        use_classifier = self.n_classes > 0 and cfg.loss.class_weight > 0
        self.classifier = SliceClassifier(self.n_classes, cfg.model.classifier_width) if use_classifier else None

    def generator_parameters(self):
        return list(self.encoder.parameters()) + list(self.decoder.parameters())


@dataclass
class EpochStats:
    epoch: int  # 1-based number of the finished epoch
    losses: dict[str, float]
    seconds: float
    images_per_second: float


class Trainer:
    """Owns model, optimisers, data-on-device and RNG; ``train_epoch`` runs one pass over the data.

    ``images``: (N, S, S) uint8, ``labels``: (N,) int; ``n_classes`` from the prepared data.
    """

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device: torch.device | None = None):
        self.cfg = cfg
        self.device = device or resolve_device(cfg.train.device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.image_size = int(images.shape[-1])
        self.model = VAEGAN(cfg, self.image_size, n_classes).to(self.device)
        self.memory_format = torch.channels_last if self.cuda and cfg.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.batch_size = min(cfg.train.batch_size, len(images))
        self.steps_per_epoch = len(images) // self.batch_size
        self.shuffle = torch.Generator().manual_seed(cfg.seed)

        opt = cfg.optim
        fused = {"fused": True} if self.cuda else {}
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), **fused)
        self.opt_d = torch.optim.Adam(self.model.critic.parameters(), lr=opt.lr_critic, betas=(opt.critic_beta1, opt.beta2), **fused)
        self.opt_c = None
        if self.model.classifier is not None:
            self.opt_c = torch.optim.Adam(self.model.classifier.parameters(), lr=opt.lr_classifier, betas=(opt.beta1, opt.beta2), **fused)
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cuda and cfg.train.bf16)

        # Compiled views share parameters with the eager modules. The critic stays eager: the
        # gradient penalty needs double backward, which AOTAutograd does not support, and
        # compiling its other call sites (several shapes, requires_grad toggled) took over
        # 170 s on an H100 host without finishing (benchmarks/README.md).
        self.encode = self.model.encoder
        self.decode = self.model.decoder
        self.score = self.model.critic
        if cfg.train.compile and self.cuda:
            self.encode = torch.compile(self.model.encoder)
            self.decode = torch.compile(self.model.decoder)

        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ training
    def _adversarial_active(self) -> bool:
        return self.cfg.loss.adv_weight > 0 and self.epoch >= self.cfg.loss.adv_start_epoch

    def _kl_scale(self, index: int) -> float:
        warmup = self.cfg.loss.kl_warmup_epochs
        if warmup == 0:
            return 1.0
        return min(1.0, (self.epoch + index / max(self.steps_per_epoch, 1)) / warmup)

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit(self.images[index]).contiguous(memory_format=self.memory_format)
        if self.cfg.train.hflip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=self.device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x, self.labels[index]

    def _labels_or_none(self, labels: torch.Tensor) -> torch.Tensor | None:
        return labels if self.model.n_classes else None

    def _forward(self, x: torch.Tensor, y: torch.Tensor, with_prior: bool):
        """Encode x, decode the posterior sample and (optionally) B/2 prior samples in one pass.

        Returns mu, logvar (B, Z) float32, decoded (B or 3B/2, 1, S, S) and the labels of decoded.
        The first B decoded images are the reconstructions of x.
        """
        yc = self._labels_or_none(y)
        mu, logvar = self.encode(x, yc)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        labels = y
        if with_prior:
            n_prior = max(1, x.shape[0] // 2)
            prior_labels = y[torch.randperm(y.shape[0], device=self.device)[:n_prior]]
            z = torch.cat([z, torch.randn(n_prior, z.shape[1], device=self.device)])
            labels = torch.cat([y, prior_labels])
        return mu, logvar, self.decode(z.to(mu.dtype), self._labels_or_none(labels)), labels

    def _critic_step(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor, acc: torch.Tensor) -> None:
        """One critic update against detached fakes (reconstructions followed by prior samples)."""
        cfg = self.cfg.loss
        yc = self._labels_or_none(y)
        x, fake = self._noisy(x), self._noisy(fake)
        b = x.shape[0]
        with torch.autocast(**self.autocast):
            # Real images, reconstructions and prior samples in one call (one launch sequence on a
            # GPU instead of three); minibatch statistics stay per set.
            scores = self.score(torch.cat([x, fake]), self._labels_or_none(torch.cat([y, fake_labels])),
                                set_sizes=(b, *self._fake_sets(fake, b))).float()
        d_real, d_fake = scores[:b], scores[b:]
        if cfg.gan == "wgan-gp":
            loss = losses.critic_wasserstein(d_real, d_fake, cfg.drift_weight)
        else:
            loss = losses.critic_hinge(d_real, d_fake)
        gp = torch.zeros((), device=self.device)
        if cfg.gan == "wgan-gp" and cfg.gp_weight > 0 and self.step % cfg.gp_every == 0:
            # Pair every real image with a fake: prior samples first, then reconstructions. The
            # interpolates are judged under the real image's class, since the penalty constrains
            # the critic's input gradient around each real sample.
            pool = torch.cat([fake[b:], fake[: b]])[:b]
            gp = losses.gradient_penalty(self.model.critic, x, pool, yc)
            loss = loss + cfg.gp_weight * cfg.gp_every * gp  # lazy regularisation keeps its average strength
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        acc[5] += loss.detach()
        acc[6] += gp.detach()
        acc[7] += (d_real.mean() - d_fake.mean()).detach()

    def _classifier_step(self, x: torch.Tensor, y: torch.Tensor, acc: torch.Tensor) -> None:
        """One update of the auxiliary classifier on the real batch (clean images, real labels)."""
        with torch.autocast(**self.autocast):
            logits = self.model.classifier(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_c.step()
        acc[8] += loss.detach()

    @staticmethod
    def _fake_sets(fake: torch.Tensor, n_recon: int) -> tuple[int, ...]:
        """Set sizes of decoded images: n_recon reconstructions [, then the prior samples]."""
        return (n_recon, fake.shape[0] - n_recon) if fake.shape[0] > n_recon else (n_recon,)

    def _noisy(self, images: torch.Tensor) -> torch.Tensor:
        """Instance noise (Sønderby et al. 2016) on everything the critic sees: real MRI carries
        acquisition noise a deterministic decoder cannot reproduce, and without it the critic
        wins on that cue alone and pushes the decoder towards periodic textures."""
        sigma = self.cfg.loss.instance_noise
        return images + sigma * torch.randn_like(images) if sigma > 0 else images

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, kl_scale: float, adversarial: bool, acc: torch.Tensor) -> None:
        """n_critic critic updates and one classifier update, then one encoder/decoder update. The
        last critic update reuses the generator's own forward pass (detached), so n_critic = 1
        costs no extra decoding."""
        cfg = self.cfg.loss
        model = self.model
        # The class term starts with the adversarial one, after the classifier has had the first
        # epoch(s) of real images to learn from.
        class_term = model.classifier is not None and self.epoch >= cfg.adv_start_epoch
        if model.classifier is not None:
            self._classifier_step(x, y, acc)
        if adversarial:
            for _ in range(self.cfg.optim.n_critic - 1):
                with torch.no_grad(), torch.autocast(**self.autocast):
                    _, _, fake, fake_labels = self._forward(x, y, with_prior=True)
                self._critic_step(x, y, fake, fake_labels, acc)
        with torch.autocast(**self.autocast):
            mu, logvar, decoded, decoded_labels = self._forward(x, y, with_prior=adversarial or class_term)
        if adversarial:
            self._critic_step(x, y, decoded.detach(), decoded_labels, acc)
        b = x.shape[0]
        recon = decoded[:b]
        rec = losses.reconstruction(recon.float(), x, cfg.recon)
        kl = losses.kl_divergence(mu, logvar) / (x.shape[-1] * x.shape[-2])  # per pixel, like the recon term
        loss = cfg.recon_weight * rec + cfg.kl_weight * kl_scale * kl
        adv = torch.zeros((), device=self.device)
        if adversarial:
            model.critic.requires_grad_(False)  # the generator step must not accumulate critic grads
            with torch.autocast(**self.autocast):
                scores, feats = self.score(self._noisy(decoded), self._labels_or_none(decoded_labels), features=True,
                                           set_sizes=self._fake_sets(decoded, b))
                if cfg.feature_weight > 0:
                    with torch.no_grad():
                        _, real_feats = self.score(self._noisy(x), self._labels_or_none(y), features=True)
                    feature_rec = (feats[:b].float() - real_feats.float()).abs().mean()
                    loss = loss + cfg.feature_weight * feature_rec
            adv = losses.generator_adversarial(scores.float())
            loss = loss + cfg.adv_weight * adv
            model.critic.requires_grad_(True)
        cls_g = torch.zeros((), device=self.device)
        if class_term:
            # Prior samples must be recognisable as the class they were drawn for. The classifier's
            # own parameters are frozen here: it learns from real images only.
            model.classifier.requires_grad_(False)
            with torch.autocast(**self.autocast):
                logits = model.classifier(decoded[b:])
            cls_g = F.cross_entropy(logits.float(), decoded_labels[b:])
            loss = loss + cfg.class_weight * cls_g
            model.classifier.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.generator_parameters(), self.cfg.optim.grad_clip)
        self.opt_g.step()
        self._update_ema()
        acc[0] += loss.detach()
        acc[1] += rec.detach()
        acc[2] += kl.detach()
        acc[3] += adv.detach()
        acc[4] += cls_g.detach()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (as in many EMA implementations) so short CPU runs are not dominated by the init.
        decay = min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in ((self.model.ema_encoder, self.model.encoder), (self.model.ema_decoder, self.model.decoder)):
            ema_params = list(ema.parameters())
            torch._foreach_lerp_(ema_params, [p.detach() for p in live.parameters()], 1.0 - decay)

    def _check_finite(self, acc: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        values = (acc / counts.clamp(min=1)).tolist()  # the only host sync, every log_every steps
        stats = dict(zip(LOSS_NAMES, values))
        bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
        if bad:
            raise DivergenceError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + " (lower optim.lr / loss.adv_weight; last good checkpoint kept)"
            )
        return stats

    def train_epoch(self, on_log=None) -> EpochStats:
        """One pass over the training images. ``on_log(step, stats)`` is called every log_every steps."""
        self.model.train()
        start = time.perf_counter()
        adversarial = self._adversarial_active()
        order = torch.randperm(len(self.images), generator=self.shuffle).to(self.device)
        acc = torch.zeros(len(LOSS_NAMES), device=self.device)
        window = torch.zeros(len(LOSS_NAMES), device=self.device)
        counts = torch.ones(len(LOSS_NAMES), device=self.device)
        counts[_CRITIC_SLOTS] = self.cfg.optim.n_critic  # critic quantities are summed over n_critic updates
        for index in range(self.steps_per_epoch):
            x, y = self._batch(order[index * self.batch_size : (index + 1) * self.batch_size])
            step_acc = torch.zeros(len(LOSS_NAMES), device=self.device)
            self._train_step(x, y, self._kl_scale(index), adversarial, step_acc)
            acc += step_acc
            window += step_acc
            self.step += 1
            if self.step % self.cfg.train.log_every == 0:
                stats = self._check_finite(window, counts * self.cfg.train.log_every)
                window.zero_()
                if on_log is not None:
                    on_log(self.step, stats)
        stats = self._check_finite(acc, counts * self.steps_per_epoch)
        self.epoch += 1
        seconds = time.perf_counter() - start
        self.history.append(stats)
        return EpochStats(self.epoch, stats, seconds, self.steps_per_epoch * self.batch_size / seconds)

    # ------------------------------------------------------------------ inference
    def sample(self, labels, seed: int) -> np.ndarray:
        """Prior samples from the EMA decoder: (N, S, S) uint8, deterministic per seed."""
        return sample_images(self.model.ema_decoder, labels, seed, self.model.n_classes > 0, self.device, self.cfg.train.bf16)

    @torch.no_grad()
    def classify(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Classes (N,) int64 the auxiliary classifier assigns to (N, S, S) uint8 images."""
        classifier = self.model.classifier
        was_training = classifier.training
        classifier.eval()
        predictions = []
        for start in range(0, len(images), batch):
            x = to_unit(torch.from_numpy(np.ascontiguousarray(images[start : start + batch])).unsqueeze(1).to(self.device))
            with torch.autocast(**self.autocast):
                predictions.append(classifier(x).argmax(dim=1).cpu())
        classifier.train(was_training)
        return torch.cat(predictions).numpy()

    def reconstruct(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Posterior-mean reconstructions with the EMA encoder/decoder: (N, S, S) uint8."""
        return reconstruct_images(self.model.ema_encoder, self.model.ema_decoder, images, labels, self.model.n_classes > 0, self.device, self.cfg.train.bf16)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_c": self.opt_c.state_dict() if self.opt_c is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "rng_torch": torch.get_rng_state(),
            "rng_shuffle": self.shuffle.get_state(),
            "image_size": self.image_size,
            "n_classes": self.model.n_classes,
        }
        if self.cuda:
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.opt_c is not None:
            self.opt_c.load_state_dict(state["opt_c"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        if self.cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    def save(self, path, extra: dict | None = None) -> None:
        save_atomic({**self.state_dict(), **(extra or {})}, path)

    def restore(self, path) -> dict:
        # Loaded to CPU: RNG states must stay CPU tensors, and load_state_dict moves weights and
        # optimiser state to the parameters' device anyway.
        state = load_safe(path, map_location="cpu")
        self.load_state_dict(state)
        return state
