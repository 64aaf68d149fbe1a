"""The training engine: one VAE-GAN, its optimisers and the training step, read top to bottom.

``Trainer.train_step`` is the order of updates (StyleGAN2-ADA's phase loop is the model):

1. classifier phase (only with ``loss.class_weight`` > 0): the auxiliary classifier learns real slices;
2. critic phase, ``optim.n_critic`` times: the critic scores real images, reconstructions and prior
   samples (one call), plus the gradient penalty on every ``loss.gp_every``-th critic update;
3. generator phase: encoder + decoder minimise reconstruction + KL + adversarial (+ class) terms;
4. the EMA copy of encoder and decoder follows the live one.

Each phase reads forward → terms → update: the loss terms and their weights live in
``brainsynth.losses`` (``losses.compose``), so no phase names a term. Each phase returns its named
losses; ``train_epoch`` averages them over the epoch and over windows
of ``train.log_every`` steps. The same code runs on CPU (tests; NHWC by default, ``train.channels_last``) and CUDA (bf16 autocast,
fused Adam, optional channels_last and torch.compile of encoder/decoder).

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
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from brainsynth import losses
from brainsynth.config import Config
from brainsynth.device import keep_freed_memory, resolve_device
from brainsynth.distributed import World, average_gradients, broadcast_module, mean_over_ranks
from brainsynth.errors import DivergenceError
from brainsynth.inference import autocast, predict_classes, reconstruct_images, sample_images, to_unit
from brainsynth.meters import EpochStats, LossMeter
from brainsynth.nets import VAEGAN, BlurredEnsemble, gaussian_blur



def model_for(cfg: Config, image_size: int, n_classes: int) -> VAEGAN:
    """The VAE-GAN the config describes (conditional when there are several classes)."""
    conditioned = n_classes if cfg.model.conditional and n_classes > 1 else 0
    return VAEGAN(cfg.model, image_size, conditioned, spectral_critic=cfg.loss.gan == "hinge",
                  classifier=cfg.loss.class_weight > 0, latent_classifier=cfg.loss.latent_adv_weight > 0)


def train_grader(cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device: torch.device) -> BlurredEnsemble:
    """The frozen ensemble of the grade-consistency loss: ``loss.consistency_members`` classifiers of
    the project's recipe (``evaluate.classifier``) trained on the real training slices blurred by
    ``loss.consistency_blur`` px, each with its own seed (none of the evaluation's seeds)."""
    from brainsynth.downstream import train_classifier

    sigma = cfg.loss.consistency_blur
    unit = to_unit(torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float())
    blurred = ((gaussian_blur(unit, sigma) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    rng_state = torch.get_rng_state()  # training the members must not move the VAE-GAN's random stream
    members = [train_classifier(blurred, labels, n_classes, cfg.loss.consistency_epochs, cfg.seed + GRADER_SEED_OFFSET * (k + 1), device,
                                cfg.evaluate.classifier) for k in range(cfg.loss.consistency_members)]
    torch.set_rng_state(rng_state)
    return BlurredEnsemble(members, sigma).to(device)


def channels_last(setting: str | bool, device: torch.device) -> bool:
    """Whether to train in NHWC: ``train.channels_last`` true/false, or "auto": on the CPU, where
    oneDNN's convolutions at these narrow widths run 1.2–1.7× faster in NHWC, and not on CUDA, where
    it was measured slower on an H100 (benchmarks/README.md)."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


class Decoded(NamedTuple):
    """``Trainer.decode_batch``'s pass: mu, logvar (B, Z) float32; decoded (B + P, 1, S, S), the B
    reconstructions then the P prior samples the critic judges, and their labels (B + P,);
    swapped (W, 1, S, S) and swapped_labels (W,): the grade swaps (None without them);
    spatial_prior: mu, logvar (B, C·R²) of the learned p(z₂ | z₁, y) at the posterior samples (None: N(0, I))."""

    mu: torch.Tensor
    logvar: torch.Tensor
    decoded: torch.Tensor
    labels: torch.Tensor
    swapped: torch.Tensor | None = None
    swapped_labels: torch.Tensor | None = None
    spatial_prior: tuple[torch.Tensor, torch.Tensor] | None = None


GRADER_SEED_OFFSET = 15_485_863  # the consistency ensemble's seeds: apart from the evaluation's (seed + i) and the judge's


class Trainer:
    """Owns model, optimisers, data-on-device and RNG.

    ``images``: (N, S, S) uint8, ``labels``: (N,) int; ``n_classes`` from the prepared data.
    ``world``: this process's place in a data-parallel job (every rank gets the same arguments).
    """

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device: torch.device | None = None,
                 world: World = World()):
        # The sections the engine reads (kept apart: nothing here reads tune, evaluate or mlflow).
        self.seed, self.loss, self.optim, self.train_cfg = cfg.seed, cfg.loss, cfg.optim, cfg.train
        self.world = world
        self.device = device or resolve_device(cfg.train.device)
        self.cuda = self.device.type == "cuda"
        if not self.cuda:
            keep_freed_memory()
        torch.manual_seed(cfg.seed)
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.image_size = int(images.shape[-1])
        self.model = model_for(cfg, self.image_size, n_classes).to(self.device)
        self.memory_format = torch.channels_last if channels_last(cfg.train.channels_last, self.device) else torch.contiguous_format
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
        self.opt_z = None
        if self.model.latent_classifier is not None:
            self.opt_z = torch.optim.Adam(self.model.latent_classifier.parameters(), lr=opt.lr_classifier, betas=(opt.beta1, opt.beta2), **fused)
        self.n_classes = self.model.n_classes
        # Not part of the model (nor of its checkpoints): rebuilt, identically, from the data and the seed.
        self.grader = None
        if cfg.loss.consistency_weight > 0 and self.n_classes > 1:
            self.grader = train_grader(cfg, images, labels, self.n_classes, self.device).to(memory_format=self.memory_format)

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
            torch.manual_seed(self.seed + 1_000_003 * self.world.rank + self.epoch)

    def _step(self, optimizer: torch.optim.Optimizer, parameters) -> None:
        average_gradients(parameters, self.world)
        optimizer.step()

    # ------------------------------------------------------------------ schedule
    def progress(self, index: int) -> float:
        """Training progress in epochs at step ``index`` of the current epoch (0.0 at the start)."""
        return self.epoch + index / max(self.steps_per_epoch, 1)

    def adversarial_on(self, progress: float) -> bool:
        return self.loss.adv_weight > 0 and progress >= self.loss.adv_start_epoch

    def class_term_on(self, progress: float) -> bool:
        return self.model.classifier is not None and progress >= self.loss.adv_start_epoch

    def consistency_on(self, progress: float) -> bool:
        return self.grader is not None and progress >= self.loss.adv_start_epoch

    # ------------------------------------------------------------------ data
    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, S, S) in [-1, 1] (randomly mirrored with ``train.hflip``) and labels (B,)."""
        x = to_unit(self.images[index]).contiguous(memory_format=self.memory_format)
        if self.train_cfg.hflip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=self.device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x, self.labels[index]

    def _noisy(self, images: torch.Tensor) -> torch.Tensor:
        """Instance noise (Sønderby et al. 2016) on everything the critic sees: real MRI carries
        acquisition noise a deterministic decoder cannot reproduce, and without it the critic
        wins on that cue alone and pushes the decoder towards periodic textures."""
        sigma = self.loss.instance_noise
        return images + sigma * torch.randn_like(images) if sigma > 0 else images

    def decode_batch(self, x: torch.Tensor, y: torch.Tensor, with_prior: bool, with_swap: bool = False) -> "Decoded":
        """One decoder pass over everything a step decodes: the reconstructions of x (decoded
        posterior samples), (``with_prior``) ``loss.prior_fraction`` × B prior samples and
        (``with_swap``) as many posterior samples decoded with another grade y' ≠ y, drawn
        uniformly (the anatomy of a real slice rendered at a new grade; grade consistency).
        One call rather than one per set: fewer, larger convolutions (the decoder's GroupNorm is
        per image, so the images do not depend on what they are decoded with).
        """
        vae = self.model.vae
        mu, logvar = vae.encode(x, y)
        z, labels = [vae.reparameterise(mu, logvar)], [y]
        spatial_prior = None
        if vae.decoder.prior is not None:
            spatial_prior = vae.decoder.prior_stats(z[0][:, : vae.decoder.vector_dim], vae.labels(y))
        if with_prior:
            n_prior = max(1, int(x.shape[0] * self.loss.prior_fraction))
            labels.append(y[torch.randperm(y.shape[0], device=self.device)[:n_prior]])
            z.append(vae.prior_latent(torch.randn(n_prior, z[0].shape[1], device=self.device), labels[-1]))
        n_judged = sum(len(part) for part in labels)
        if with_swap:
            n_swap = max(1, int(y.shape[0] * self.loss.prior_fraction))
            labels.append((y[:n_swap] + torch.randint(1, self.n_classes, (n_swap,), device=self.device)) % self.n_classes)
            z.append(vae.reparameterise(mu[:n_swap], logvar[:n_swap]))
        labels = torch.cat(labels)
        decoded = vae.decode(torch.cat(z).to(x.dtype), labels)
        if not with_swap:
            return Decoded(mu, logvar, decoded, labels, spatial_prior=spatial_prior)
        return Decoded(mu, logvar, decoded[:n_judged], labels[:n_judged], decoded[n_judged:], labels[n_judged:], spatial_prior)

    def _judge(self, images: torch.Tensor, labels: torch.Tensor, set_sizes=None):
        """The critic's (scores, features) of ``images`` with instance noise, under autocast."""
        with torch.autocast(**self.autocast):
            return self.model.critic(self._noisy(images), self.model.labels(labels), features=True, set_sizes=set_sizes)

    def _grade(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**self.autocast):
            return self.grader(images)

    def _classify(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**self.autocast):
            return self.model.classifier(images)

    def _update(self, optimizer: torch.optim.Optimizer, parameters: list, loss: torch.Tensor, clip: float = 0.0) -> None:
        """backward → average over ranks → clip to norm ``clip`` (0: none) → step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(parameters, self.world)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()

    # ------------------------------------------------------------------ phases: forward → terms → update
    def classifier_phase(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of the auxiliary classifier on the real batch (clean images, real labels)."""
        loss, named = losses.compose("classifier", losses.ClassifierForward(self._classify(x), y), self.loss, self.step)
        self._update(self.opt_c, list(self.model.classifier.parameters()), loss)
        return named

    def latent_phase(self, mu: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of the Fader adversary on the batch's (detached) posterior means."""
        loss, named = losses.compose("latent", losses.ClassifierForward(self.model.latent_classifier(mu.detach()), y), self.loss, self.step)
        self._update(self.opt_z, list(self.model.latent_classifier.parameters()), loss)
        return named

    def critic_phase(self, x: torch.Tensor, y: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic update against detached fakes (reconstructions, then prior samples)."""
        model = self.model
        x, fake = self._noisy(x), self._noisy(fake.detach())
        b = x.shape[0]
        sizes = losses.set_sizes(fake.shape[0], b)
        with torch.autocast(**self.autocast):
            # Real images, reconstructions and prior samples in one call; minibatch statistics stay per set.
            scores = model.critic(torch.cat([x, fake]), model.labels(torch.cat([y, fake_labels])), set_sizes=(b, *sizes)).float()
        forward = losses.CriticForward(x, fake, scores[:b], scores[b:], y, lambda images, labels: model.critic(images, model.labels(labels)),
                                       self.critic_updates)
        loss, named = losses.compose("critic", forward, self.loss, self.critic_updates)
        self._update(self.opt_d, list(model.critic.parameters()), loss)
        self.critic_updates += 1
        return named

    def generator_phase(self, forward: losses.GeneratorForward, progress: float) -> dict[str, torch.Tensor]:
        """One encoder/decoder update from a forward pass (``decode_batch``); the critic and the
        classifier are frozen meanwhile (their gradients come from their own phases)."""
        frozen = [m for m in (self.model.critic, self.model.classifier, self.model.latent_classifier) if m is not None]
        for module in frozen:
            module.requires_grad_(False)
        loss, named = losses.compose("generator", forward, self.loss, progress)
        for module in frozen:
            module.requires_grad_(True)
        self._update(self.opt_g, self.model.generator_parameters(), loss, clip=self.optim.grad_clip)
        return named

    # ------------------------------------------------------------------ the step and the epoch
    def train_step(self, x: torch.Tensor, y: torch.Tensor, progress: float) -> LossMeter:
        """Every update of one step, in order. The last critic update reuses the generator's own
        forward pass (detached), so n_critic = 1 costs no extra decoding."""
        adversarial = self.adversarial_on(progress)
        class_term = self.class_term_on(progress)
        consistency = self.consistency_on(progress)
        meter = LossMeter()
        if self.model.classifier is not None:
            meter.add(self.classifier_phase(x, y))
        if adversarial:
            for _ in range(self.optim.n_critic - 1):
                with torch.no_grad(), torch.autocast(**self.autocast):
                    fake = self.decode_batch(x, y, with_prior=True)
                meter.add(self.critic_phase(x, y, fake.decoded, fake.labels))
        with torch.autocast(**self.autocast):
            out = self.decode_batch(x, y, with_prior=adversarial or class_term or consistency, with_swap=consistency)
        if adversarial:
            meter.add(self.critic_phase(x, y, out.decoded, out.labels))
        if self.model.latent_classifier is not None:
            meter.add(self.latent_phase(out.mu, y))
        forward = losses.GeneratorForward(x, y, out.mu, out.logvar, out.decoded, out.labels, critic=self._judge if adversarial else None,
                                          classifier=self._classify if class_term else None,
                                          grader=self._grade if consistency else None, swapped=out.swapped, swapped_labels=out.swapped_labels,
                                          latent_classifier=self.model.latent_classifier, spatial_prior=out.spatial_prior,
                                          last_layer=self.model.decoder.out[-1].weight if self.loss.adaptive_adv else None)
        meter.add(self.generator_phase(forward, progress))
        # EMA warm-up (as in many EMA implementations): short runs are not dominated by the init.
        self.model.update_ema(min(self.optim.ema_decay, (1 + self.step) / (self.optim.ema_warmup_steps + self.step)))
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
            if logging and (self.step % self.train_cfg.log_every == 0 or index == self.steps_per_epoch - 1):
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
        return sample_images(self.model.ema_vae, labels, seed, self.device, self.train_cfg.bf16)

    def reconstruct(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Posterior-mean reconstructions with the EMA encoder/decoder: (N, S, S) uint8."""
        return reconstruct_images(self.model.ema_vae, images, labels, self.device, self.train_cfg.bf16)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """Classes (N,) the auxiliary classifier assigns to (N, S, S) uint8 images."""
        return predict_classes(self.model.classifier, images, self.train_cfg.bf16)

    # ------------------------------------------------------------------ state (checkpoint.save_training_state writes it)
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_c": self.opt_c.state_dict() if self.opt_c is not None else None,
            "opt_z": self.opt_z.state_dict() if self.opt_z is not None else None,
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
        if self.opt_z is not None and state.get("opt_z") is not None:
            self.opt_z.load_state_dict(state["opt_z"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.critic_updates = int(state.get("critic_updates", 0))
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        if self.cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self._seed_noise()  # the checkpoint holds rank 0's streams
