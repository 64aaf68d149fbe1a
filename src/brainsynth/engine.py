"""The training engine: one VAE-GAN, its optimisers and the training step, read top to bottom.

``Trainer.train_step`` is the order of updates (StyleGAN2-ADA's phase loop is the model):

1. classifier phase (only with ``loss.class_weight`` > 0): the auxiliary classifier learns real slices;
2. critic phase, ``optim.n_critic`` times: the critic scores real images, reconstructions and prior
   samples (one call), plus the gradient penalty on every ``loss.gp_every``-th critic update;
3. generator phase: encoder + decoder minimise reconstruction + KL + adversarial (+ class) terms.

Each phase returns its named losses; ``train_epoch`` averages them over the epoch and over windows
of ``train.log_every`` steps. The same code runs on CPU (tests) and CUDA (bf16 autocast, fused
Adam, optional channels_last and torch.compile of encoder/decoder).

Speed: the prepared uint8 images live on the training device and batches are gathered by index
there (no DataLoader); losses stay device tensors until a log point, so the hot loop never waits
for the host.

Data-parallel (``train.nproc_per_node`` > 1, see ``brainsynth.distributed``): each rank takes its
slice of every global batch of ``train.batch_size`` images from one seeded permutation, and its
gradients are averaged across ranks after each backward, before each optimiser step. Minibatch
statistics (the critic's minibatch-stddev groups) stay within each rank's sets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from brainsynth import losses
from brainsynth.config import Config
from brainsynth.device import resolve_device
from brainsynth.distributed import World, average_gradients, broadcast_module, mean_over_ranks
from brainsynth.errors import DivergenceError
from brainsynth.inference import autocast, predict_classes, reconstruct_images, sample_images, to_unit
from brainsynth.nets import VAEGAN

# Every loss a step can report. cls_g: the auxiliary classifier's cross-entropy on prior samples
# (against the class they were drawn for); cls_real: its cross-entropy on real training images.
LOSS_NAMES = ("loss_g", "rec", "kl", "adv_g", "cls_g", "critic", "gp", "w_distance", "cls_real")


class LossMeter:
    """Running means of named scalar losses. Values stay device tensors (no host sync) until
    ``means()``; each name is averaged over the updates that reported it (the penalty, for one,
    is not computed on every critic update)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, named: dict[str, torch.Tensor]) -> None:
        for name, value in named.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def merge(self, other: "LossMeter") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def means(self) -> dict[str, float]:
        """{name: mean} for every name in LOSS_NAMES (0.0 for those never reported)."""
        names = [n for n in LOSS_NAMES if n in self.sums]
        values = torch.stack([self.sums[n] for n in names]).tolist() if names else []  # one host sync
        means = {n: v / self.counts[n] for n, v in zip(names, values)}
        return {n: means.get(n, 0.0) for n in LOSS_NAMES}

    def reported(self) -> set[str]:
        """The names some update reported (a disabled loss term never is)."""
        return set(self.counts)


@dataclass
class EpochStats:
    epoch: int  # 1-based number of the finished epoch
    losses: dict[str, float]  # every name in LOSS_NAMES (0.0 for terms not computed)
    seconds: float
    images_per_second: float
    reported: frozenset[str] = frozenset()  # the loss terms this epoch computed

    def computed_losses(self) -> dict[str, float]:
        """The losses of the terms that were computed (what is worth logging)."""
        return {k: v for k, v in self.losses.items() if k in self.reported}


def model_for(cfg: Config, image_size: int, n_classes: int) -> VAEGAN:
    """The VAE-GAN the config describes (conditional when there are several classes)."""
    conditioned = n_classes if cfg.model.conditional and n_classes > 1 else 0
    return VAEGAN(cfg.model, image_size, conditioned, spectral_critic=cfg.loss.gan == "hinge",
                  classifier=cfg.loss.class_weight > 0)


class Trainer:
    """Owns model, optimisers, data-on-device and RNG.

    ``images``: (N, S, S) uint8, ``labels``: (N,) int; ``n_classes`` from the prepared data.
    ``world``: this process's place in a data-parallel job (every rank gets the same arguments).
    """

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device: torch.device | None = None,
                 world: World = World()):
        self.cfg = cfg
        self.world = world
        self.device = device or resolve_device(cfg.train.device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.image_size = int(images.shape[-1])
        self.model = model_for(cfg, self.image_size, n_classes).to(self.device)
        self.memory_format = torch.channels_last if self.cuda and cfg.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        broadcast_module(self.model, world)
        if cfg.train.compile and self.cuda:
            # In place, sharing parameters and state-dict keys. The critic stays eager: the gradient
            # penalty needs double backward, which AOTAutograd does not support.
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.images = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        # The global batch: train.batch_size images over all ranks together, so results do not
        # change with the number of processes; each rank holds local_batch of them.
        self.batch_size = min(cfg.train.batch_size, len(images))
        self.batch_size -= self.batch_size % world.size
        if self.batch_size == 0:
            raise ValueError(f"{len(images)} training images cannot be shared by {world.size} processes")
        self.local_batch = self.batch_size // world.size
        self.steps_per_epoch = len(images) // self.batch_size
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.autocast = autocast(self.device, cfg.train.bf16)

        opt = cfg.optim
        fused = {"fused": True} if self.cuda else {}
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), **fused)
        self.opt_d = torch.optim.Adam(self.model.critic.parameters(), lr=opt.lr_critic, betas=(opt.critic_beta1, opt.beta2), **fused)
        self.opt_c = None
        if self.model.classifier is not None:
            self.opt_c = torch.optim.Adam(self.model.classifier.parameters(), lr=opt.lr_classifier, betas=(opt.beta1, opt.beta2), **fused)

        self.epoch = 0  # finished epochs
        self.step = 0  # finished generator steps
        self.critic_updates = 0  # finished critic updates (loss.gp_every counts these)
        self.history: list[dict[str, float]] = []
        self._seed_noise()

    def _seed_noise(self) -> None:
        """Every rank starts from the same seed (identical initial weights); after that each one
        needs its own noise (reparameterisation, instance noise, flips, prior labels). Rank 0
        keeps the single-process stream, so one process trains exactly as before."""
        if self.world.rank > 0:
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.world.rank + self.epoch)

    def _step(self, optimizer: torch.optim.Optimizer, parameters) -> None:
        average_gradients(parameters, self.world)
        optimizer.step()

    # ------------------------------------------------------------------ schedule
    def progress(self, index: int) -> float:
        """Training progress in epochs at step ``index`` of the current epoch (0.0 at the start)."""
        return self.epoch + index / max(self.steps_per_epoch, 1)

    def kl_scale(self, progress: float) -> float:
        warmup = self.cfg.loss.kl_warmup_epochs
        return 1.0 if warmup == 0 else min(1.0, progress / warmup)

    def adversarial_on(self, progress: float) -> bool:
        return self.cfg.loss.adv_weight > 0 and progress >= self.cfg.loss.adv_start_epoch

    # ------------------------------------------------------------------ data
    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, S, S) in [-1, 1] (randomly mirrored with ``train.hflip``) and labels (B,)."""
        x = to_unit(self.images[index]).contiguous(memory_format=self.memory_format)
        if self.cfg.train.hflip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=self.device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x, self.labels[index]

    def _noisy(self, images: torch.Tensor) -> torch.Tensor:
        """Instance noise (Sønderby et al. 2016) on everything the critic sees: real MRI carries
        acquisition noise a deterministic decoder cannot reproduce, and without it the critic
        wins on that cue alone and pushes the decoder towards periodic textures."""
        sigma = self.cfg.loss.instance_noise
        return images + sigma * torch.randn_like(images) if sigma > 0 else images

    def decode_batch(self, x: torch.Tensor, y: torch.Tensor, with_prior: bool):
        """Reconstructions of x and (``with_prior``) B/2 prior samples, decoded in one pass.

        Returns mu, logvar (B, Z) float32, decoded (B or 3B/2, 1, S, S) whose first B images are
        the reconstructions, and the labels of the decoded images.
        """
        model = self.model
        mu, logvar = model.encode(x, y)
        z = model.reparameterise(mu, logvar)
        labels = y
        if with_prior:
            n_prior = max(1, x.shape[0] // 2)
            prior_labels = y[torch.randperm(y.shape[0], device=self.device)[:n_prior]]
            z = torch.cat([z, torch.randn(n_prior, z.shape[1], device=self.device)])
            labels = torch.cat([y, prior_labels])
        return mu, logvar, model.decode(z.to(x.dtype), labels), labels

    @staticmethod
    def _set_sizes(n_decoded: int, n_recon: int) -> tuple[int, ...]:
        """Sizes of the sets in a decoded batch: reconstructions [, prior samples]."""
        return (n_recon, n_decoded - n_recon) if n_decoded > n_recon else (n_recon,)

    # ------------------------------------------------------------------ phases
    def classifier_phase(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of the auxiliary classifier on the real batch (clean images, real labels)."""
        with torch.autocast(**self.autocast):
            logits = self.model.classifier(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        self._step(self.opt_c, self.model.classifier.parameters())
        return {"cls_real": loss}

    def critic_phase(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic update against detached fakes (reconstructions, then prior samples)."""
        cfg = self.cfg.loss
        model = self.model
        x, fake = self._noisy(x), self._noisy(fake.detach())
        b = x.shape[0]
        with torch.autocast(**self.autocast):
            # Real images, reconstructions and prior samples in one call; minibatch statistics stay per set.
            scores = model.critic(torch.cat([x, fake]), model.labels(torch.cat([y, fake_labels])),
                                  set_sizes=(b, *self._set_sizes(fake.shape[0], b))).float()
        d_real, d_fake = scores[:b], scores[b:]
        if cfg.gan == "wgan-gp":
            loss = losses.critic_wasserstein(d_real, d_fake, cfg.drift_weight)
        else:
            loss = losses.critic_hinge(d_real, d_fake)
        out = {"critic": loss, "w_distance": d_real.mean() - d_fake.mean()}
        if cfg.gan == "wgan-gp" and cfg.gp_weight > 0 and self.critic_updates % cfg.gp_every == 0:
            # Pair every real image with a fake: prior samples first, then reconstructions. The
            # interpolates are judged under the real image's class, since the penalty constrains
            # the critic's input gradient around each real sample.
            pool = torch.cat([fake[b:], fake[:b]])[:b]
            gp = losses.gradient_penalty(model.critic, x, pool, model.labels(y))
            loss = loss + cfg.gp_weight * cfg.gp_every * gp  # lazy regularisation keeps its average strength
            out["gp"] = gp
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self._step(self.opt_d, self.model.critic.parameters())
        self.critic_updates += 1
        return out

    def generator_phase(self, x: torch.Tensor, y: torch.Tensor, mu, logvar, decoded, decoded_labels, kl_scale: float,
                        adversarial: bool, class_term: bool) -> dict[str, torch.Tensor]:
        """One encoder/decoder update from a forward pass (``decode_batch``)."""
        cfg = self.cfg.loss
        model = self.model
        b = x.shape[0]
        rec = losses.reconstruction(decoded[:b].float(), x, cfg.recon)
        kl = losses.kl_divergence(mu, logvar) / (x.shape[-1] * x.shape[-2])  # per pixel, like the recon term
        loss = cfg.recon_weight * rec + cfg.kl_weight * kl_scale * kl
        out = {"rec": rec, "kl": kl}
        if adversarial:
            model.critic.requires_grad_(False)  # the generator step must not accumulate critic grads
            with torch.autocast(**self.autocast):
                scores, feats = model.critic(self._noisy(decoded), model.labels(decoded_labels), features=True,
                                             set_sizes=self._set_sizes(decoded.shape[0], b))
                if cfg.feature_weight > 0:
                    with torch.no_grad():
                        _, real_feats = model.critic(self._noisy(x), model.labels(y), features=True)
                    loss = loss + cfg.feature_weight * (feats[:b].float() - real_feats.float()).abs().mean()
            out["adv_g"] = losses.generator_adversarial(scores.float())
            loss = loss + cfg.adv_weight * out["adv_g"]
            model.critic.requires_grad_(True)
        if class_term:
            # Prior samples must be recognisable as the class they were drawn for. The classifier's
            # own parameters are frozen here: it learns from real images only.
            model.classifier.requires_grad_(False)
            with torch.autocast(**self.autocast):
                logits = model.classifier(decoded[b:])
            out["cls_g"] = F.cross_entropy(logits.float(), decoded_labels[b:])
            loss = loss + cfg.class_weight * out["cls_g"]
            model.classifier.requires_grad_(True)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model.generator_parameters(), self.world)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.generator_parameters(), self.cfg.optim.grad_clip)
        self.opt_g.step()
        # EMA warm-up (as in many EMA implementations) so short runs are not dominated by the init.
        model.update_ema(min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step)))
        out["loss_g"] = loss
        return out

    # ------------------------------------------------------------------ the step and the epoch
    def train_step(self, x: torch.Tensor, y: torch.Tensor, progress: float) -> LossMeter:
        """Every update of one step, in order. The last critic update reuses the generator's own
        forward pass (detached), so n_critic = 1 costs no extra decoding."""
        adversarial = self.adversarial_on(progress)
        class_term = self.model.classifier is not None and progress >= self.cfg.loss.adv_start_epoch
        meter = LossMeter()
        if self.model.classifier is not None:
            meter.add(self.classifier_phase(x, y))
        if adversarial:
            for _ in range(self.cfg.optim.n_critic - 1):
                with torch.no_grad(), torch.autocast(**self.autocast):
                    _, _, fake, fake_labels = self.decode_batch(x, y, with_prior=True)
                meter.add(self.critic_phase(x, y, fake, fake_labels))
        with torch.autocast(**self.autocast):
            mu, logvar, decoded, decoded_labels = self.decode_batch(x, y, with_prior=adversarial or class_term)
        if adversarial:
            meter.add(self.critic_phase(x, y, decoded, decoded_labels))
        meter.add(self.generator_phase(x, y, mu, logvar, decoded, decoded_labels, self.kl_scale(progress), adversarial, class_term))
        self.step += 1
        return meter

    def train_epoch(self, on_log=None, progress: str | None = None) -> EpochStats:
        """One pass over the training images. ``on_log(step, means)`` gets the mean losses of the
        computed terms over every window of ``train.log_every`` steps, and of the shorter last
        window of the epoch. ``progress``: a tqdm bar with this description on a terminal (none
        when stderr is not one: logs and DVC's queue logs stay free of bar frames)."""
        self.model.train()
        start = time.perf_counter()
        order = torch.randperm(len(self.images), generator=self.shuffle).to(self.device)  # the same on every rank
        epoch_losses, window = LossMeter(), LossMeter()
        shard = self.world.rank * self.local_batch
        steps = range(self.steps_per_epoch)
        if progress is not None:
            steps = tqdm(steps, desc=progress, unit="step", leave=False, disable=None, dynamic_ncols=True)
        for index in steps:
            first = index * self.batch_size + shard
            x, y = self.batch(order[first : first + self.local_batch])
            step_losses = self.train_step(x, y, self.progress(index))
            epoch_losses.merge(step_losses)
            window.merge(step_losses)
            # Every rank takes part (averaging over ranks is a collective), even those that do not log.
            logging = on_log is not None or self.world.distributed
            if logging and (self.step % self.cfg.train.log_every == 0 or index == self.steps_per_epoch - 1):
                means = self._checked(window)
                if on_log is not None:
                    on_log(self.step, {k: v for k, v in means.items() if k in window.reported()})
                window = LossMeter()
        stats = self._checked(epoch_losses)
        self.epoch += 1
        seconds = time.perf_counter() - start
        self.history.append(stats)
        return EpochStats(self.epoch, stats, seconds, self.steps_per_epoch * self.batch_size / seconds, frozenset(epoch_losses.reported()))

    def _checked(self, meter: LossMeter) -> dict[str, float]:
        """The meter's means, averaged over ranks (so every rank raises on a divergence together)."""
        means = meter.means()
        if self.world.distributed:
            averaged = mean_over_ranks(torch.tensor(list(means.values()), device=self.device), self.world).tolist()
            means = dict(zip(means, averaged))
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            raise DivergenceError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.step}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + " (lower optim.lr / loss.adv_weight; last good checkpoint kept)"
            )
        return means

    # ------------------------------------------------------------------ inference with the EMA copy
    def sample(self, labels, seed: int) -> np.ndarray:
        """Prior samples from the EMA decoder: (N, S, S) uint8, deterministic per seed."""
        return sample_images(self.model.ema_decoder, labels, seed, self.model.n_classes > 0, self.device, self.cfg.train.bf16)

    def reconstruct(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Posterior-mean reconstructions with the EMA encoder/decoder: (N, S, S) uint8."""
        return reconstruct_images(self.model.ema_encoder, self.model.ema_decoder, images, labels, self.model.n_classes > 0,
                                  self.device, self.cfg.train.bf16)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Classes (N,) the auxiliary classifier assigns to (N, S, S) uint8 images."""
        return predict_classes(self.model.classifier, images, self.cfg.train.bf16)

    # ------------------------------------------------------------------ state (checkpoint.save_training_state writes it)
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_c": self.opt_c.state_dict() if self.opt_c is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "critic_updates": self.critic_updates,
            "history": self.history,
            "rng_torch": torch.get_rng_state(),
            "rng_shuffle": self.shuffle.get_state(),
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
        self.critic_updates = int(state.get("critic_updates", 0))
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        if self.cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self._seed_noise()  # the checkpoint holds rank 0's streams
