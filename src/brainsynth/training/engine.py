"""The training engine: one VAE-GAN, its optimiser, its parts and the training step, read top to bottom.

``Trainer.train_step`` is the order of updates (StyleGAN2-ADA's phase loop is the model):

1. one decoder pass over what the step needs: reconstructions of the batch, and the prior samples
   and grade swaps the active parts ask for (``decode_batch``);
2. each active part's own update (``training.parts``: the critic, ``optim.n_critic`` times; the
   Fader adversary), on the detached batch;
3. the generator update: encoder + decoder minimise the autoencoder's terms
   (``losses.AutoencoderLoss``) plus every active part's generator terms, the parts' networks frozen;
4. the EMA copy of encoder and decoder follows the live one.

The engine names no loss term and reads no ``loss.*`` key: the autoencoder's terms and the parts
bring their own weights. ``train_epoch`` averages the named losses over the epoch and over windows
of ``train.log_every`` steps. The same code runs on CPU (tests; NHWC by default,
``train.channels_last``) and CUDA (bf16 autocast, fused Adam, optional channels_last and
torch.compile of encoder/decoder).

Speed: the prepared uint8 images live on the training device and batches are gathered by index
there (no DataLoader); losses stay device tensors until a log point, so the hot loop never waits
for the host.

Data-parallel (``train.nproc_per_node`` > 1, see ``brainsynth.distributed``): each rank takes its
slice of every global batch of ``train.batch_size`` images from one seeded permutation, and its
gradients are averaged across ranks after each backward, before each optimiser step. Minibatch
statistics (the critic's minibatch-stddev groups) stay within each rank's sets.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from brainsynth.config import Config
from brainsynth.device import keep_freed_memory
from brainsynth.distributed import World, average_gradients, broadcast_module, mean_over_ranks
from brainsynth.errors import DivergenceError
from brainsynth.inference import autocast_settings, reconstruct_images, sample_images, to_unit
from brainsynth.model.vaegan import VAEGAN
from brainsynth.training.losses import AutoencoderLoss, weighted_sum
from brainsynth.training.parts import Context, Step, build_parts


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

    def add_all(self, updates: list[dict[str, torch.Tensor]]) -> None:
        for named in updates:
            self.add(named)

    def merge(self, other: "LossMeter") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def means(self, all_names: tuple[str, ...] | None = None) -> dict[str, float]:
        """{name: mean} for every name in ``all_names`` (``Trainer.loss_names()``; 0.0 for those never
        reported), or for every name reported when None."""
        all_names = tuple(self.sums) if all_names is None else all_names
        names = [n for n in all_names if n in self.sums]
        values = torch.stack([self.sums[n] for n in names]).tolist() if names else []  # one host sync
        means = {n: v / self.counts[n] for n, v in zip(names, values)}
        return {n: means.get(n, 0.0) for n in all_names}

    def reported(self) -> set[str]:
        """The names some update reported (a disabled loss term never is)."""
        return set(self.counts)


@dataclass
class EpochStats:
    epoch: int  # 1-based number of the finished epoch
    losses: dict[str, float]  # every name in Trainer.loss_names() (0.0 for terms not computed)
    seconds: float
    images_per_second: float
    reported: frozenset[str] = frozenset()  # the loss terms this epoch computed

    def computed_losses(self) -> dict[str, float]:
        """The losses of the terms that were computed (what is worth logging)."""
        return {k: v for k, v in self.losses.items() if k in self.reported}


def channels_last(setting: str | bool, device: torch.device) -> bool:
    """Whether to train in NHWC: ``train.channels_last`` true/false, or "auto": on the CPU, where
    oneDNN's convolutions at these narrow widths run 1.2–1.7× faster in NHWC, and not on CUDA, where
    it was measured slower on an H100 (experiments/results/2026-12-06-lab-notebook.md)."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


class Trainer:
    """Owns model, parts, optimiser, data-on-device and RNG.

    ``images``: (N, S, S) uint8, ``labels``: (N,) int; ``n_classes`` from the prepared data
    (the nets are class-conditional when ``model.conditional`` and there are several); ``device``:
    where to train (``device.resolve_device(train.device)`` for the config's choice).
    ``world``: this process's place in a data-parallel job (every rank gets the same arguments).
    """

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, n_classes: int, device: torch.device, world: World = World()):
        self.seed, self.optim, self.train_cfg = cfg.seed, cfg.optim, cfg.train
        self.world = world
        self.device = device
        self.cuda = self.device.type == "cuda"
        self.autocast = autocast_settings(self.device, cfg.train.bf16)
        self.memory_format = torch.channels_last if channels_last(cfg.train.channels_last, self.device) else torch.contiguous_format
        if not self.cuda:
            keep_freed_memory()
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.image_size = int(images.shape[-1])
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

        torch.manual_seed(cfg.seed)  # the model's and then the parts' initial weights, in this order
        conditioned = n_classes if cfg.model.conditional and n_classes > 1 else 0
        self.model = VAEGAN(cfg.model, self.image_size, conditioned).to(self.device).to(memory_format=self.memory_format)
        self.n_classes = self.model.n_classes
        self.autoencoder_loss = AutoencoderLoss(cfg.loss)
        self.opt_g = torch.optim.Adam(self.model.generator_parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                      **({"fused": True} if self.cuda else {}))
        self.parts = build_parts(cfg, Context(self.model, images, labels, self.decode_batch, self._update,
                                              self.device, self.memory_format))
        for module in [self.model, *(m for part in self.parts for m in part.frozen)]:
            broadcast_module(module, world)
        if cfg.train.compile and self.cuda:
            # In place, sharing parameters and state-dict keys. The critic stays eager: the gradient
            # penalty needs double backward, which AOTAutograd does not support.
            self.model.encoder.compile()
            self.model.decoder.compile()

        self.epoch = 0  # finished epochs
        self.step = 0  # finished generator steps
        self.history: list[dict[str, float]] = []
        self.prepared = False  # the parts' prepare() has run (the first step does it)
        self._seed_noise()

    def _seed_noise(self) -> None:
        """Every rank starts from the same seed (identical initial weights); after that each one
        needs its own noise (reparameterisation, instance noise, flips, prior labels). Rank 0
        keeps the single-process stream, so one process trains exactly as before."""
        if self.world.rank > 0:
            torch.manual_seed(self.seed + 1_000_003 * self.world.rank + self.epoch)

    def loss_names(self) -> tuple[str, ...]:
        """Every name a step of this trainer can report, in the order of the logs and history.csv."""
        generator = [*AutoencoderLoss.names, *(n for part in self.parts for n in part.generator_names)]
        return ("loss_g", *generator, *(n for part in self.parts for n in part.update_names))

    def prepare(self) -> None:
        """What the parts need before the first step (the consistency ensemble trains); once.
        ``train_epoch`` calls it before the epoch's first random draw and ``load_state_dict`` before
        it restores the random streams, so a run draws the same numbers whether it started fresh or
        resumed (building the consistency ensemble draws from torch's stream)."""
        if not self.prepared:
            for part in self.parts:
                part.prepare()
            self.prepared = True

    def active_parts(self, progress: float) -> list:
        """The parts that act at ``progress`` (prepared first, for a caller that steps by hand)."""
        self.prepare()
        return [part for part in self.parts if part.on(progress)]

    def progress(self, index: int) -> float:
        """Training progress in epochs at step ``index`` of the current epoch (0.0 at the start)."""
        return self.epoch + index / max(self.steps_per_epoch, 1)

    # ------------------------------------------------------------------ data
    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, S, S) in [-1, 1] (randomly mirrored with ``train.hflip``) and labels (B,)."""
        x = to_unit(self.images[index]).contiguous(memory_format=self.memory_format)
        if self.train_cfg.hflip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=self.device) < 0.5
            x = torch.where(flip, x.flip(-1), x)
        return x, self.labels[index]

    def decode_batch(self, x: torch.Tensor, y: torch.Tensor, prior: float, swaps: float = 0.0) -> Step:
        """One decoder pass over everything a step decodes: the reconstructions of x (decoded
        posterior samples), ``prior`` × B prior samples (at least one; 0: none) and ``swaps`` × B
        posterior samples decoded with another grade y' ≠ y, drawn uniformly (the anatomy of a real
        slice rendered at a new grade). One call rather than one per set: fewer, larger
        convolutions (the decoder's GroupNorm is per image, so the images do not depend on what
        they are decoded with).
        """
        vae = self.model.vae
        mu, logvar = vae.encode(x, y)
        z, labels = [vae.reparameterise(mu, logvar)], [y]
        if prior:
            n_prior = max(1, int(x.shape[0] * prior))
            labels.append(y[torch.randperm(y.shape[0], device=self.device)[:n_prior]])
            z.append(torch.randn(n_prior, z[0].shape[1], device=self.device))
        n_judged = sum(len(part) for part in labels)
        if swaps:
            n_swap = max(1, int(y.shape[0] * swaps))
            labels.append((y[:n_swap] + torch.randint(1, self.n_classes, (n_swap,), device=self.device)) % self.n_classes)
            z.append(vae.reparameterise(mu[:n_swap], logvar[:n_swap]))
        labels = torch.cat(labels)
        decoded = vae.decode(torch.cat(z).to(x.dtype), labels)
        swapped, swapped_labels = (decoded[n_judged:], labels[n_judged:]) if swaps else (None, None)
        return Step(x, y, mu, logvar, decoded[:n_judged], labels[:n_judged], swapped, swapped_labels, self.autocast)

    def _update(self, optimizer: torch.optim.Optimizer, parameters: list, loss: torch.Tensor, clip: float = 0.0) -> None:
        """backward → average over ranks → clip to norm ``clip`` (0: none) → step."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(parameters, self.world)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()

    # ------------------------------------------------------------------ the step and the epoch
    def train_step(self, x: torch.Tensor, y: torch.Tensor, progress: float) -> LossMeter:
        """Every update of one step, in order: decode, each active part's update, the generator's."""
        meter, parts = LossMeter(), self.active_parts(progress)
        with torch.autocast(**self.autocast):
            step = self.decode_batch(x, y, max((p.prior_samples for p in parts), default=0.0), max((p.grade_swaps for p in parts), default=0.0))
        for part in parts:
            meter.add_all(part.update(step))
        meter.add(self.generator_update(step, parts, progress))
        # EMA warm-up (as in many EMA implementations): short runs are not dominated by the init.
        self.update_ema(min(self.optim.ema_decay, (1 + self.step) / (self.optim.ema_warmup_steps + self.step)))
        self.step += 1
        return meter

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema ← decay · ema + (1 − decay) · live, for encoder and decoder."""
        model = self.model
        for ema, live in ((model.ema_encoder, model.encoder), (model.ema_decoder, model.decoder)):
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1.0 - decay)

    def generator_update(self, step: Step, parts: list, progress: float) -> dict[str, torch.Tensor]:
        """One encoder/decoder update on the autoencoder's terms and the active parts'; every part's
        network is frozen meanwhile (its gradients come from its own update)."""
        frozen = [module for part in self.parts for module in part.frozen]
        for module in frozen:
            module.requires_grad_(False)
        total, terms = weighted_sum(itertools.chain(self.autoencoder_loss.terms(step, progress),
                                                    (term for part in parts for term in part.generator_terms(step, progress))))
        for module in frozen:
            module.requires_grad_(True)
        self._update(self.opt_g, self.model.generator_parameters(), total, clip=self.optim.grad_clip)
        return {**{t.name: t.value for t in terms}, "loss_g": total}

    def train_epoch(self, on_log=None, progress: str | None = None) -> EpochStats:
        """One pass over the training images. ``on_log(step, means)`` gets the mean losses of the
        computed terms over every window of ``train.log_every`` steps, and of the shorter last
        window of the epoch. ``progress``: a tqdm bar with this description on a terminal (none
        when stderr is not one: logs and DVC's queue logs stay free of bar frames)."""
        self.prepare()
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
        means = meter.means(self.loss_names())
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

    # ------------------------------------------------------------------ state (checkpoint.save_training_state writes it)
    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "parts": {part.name: part.state_dict() for part in self.parts},
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "rng_torch": torch.get_rng_state(),
            "rng_shuffle": self.shuffle.get_state(),
        }
        if self.cuda:
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.prepare()  # before the random streams are restored: preparing may draw from them
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        for part in self.parts:
            part.load_state_dict(state["parts"][part.name])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        if self.cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self._seed_noise()  # the checkpoint holds rank 0's streams
