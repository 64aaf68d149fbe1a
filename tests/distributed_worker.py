"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU), and once as
a plain process for the single-process reference. Writes ``<out>/rank<R>.pt`` with what the test
compares.

    python tests/distributed_worker.py gradients|training OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from helpers import repo_config

from brainsynth import distributed
from brainsynth.model.vaegan import VAEGAN
from brainsynth.training import losses
from brainsynth.training.engine import Trainer

SIZE, BATCH, CLASSES = 16, 8, 3
TINY = {"data.image_size": SIZE, "model.latent_dim": 8, "model.base_channels": 8, "model.max_channels": 16,
        "model.cbam_res": [8], "model.self_attention_res": [8]}


def gradients(world: distributed.World) -> dict:
    """Gradients of three updates on this rank's slice of one fixed batch (same images, labels,
    interpolation weights and latents on every rank), averaged over ranks: a critic update with
    the penalty in the same backward, a penalty-only update (lazy regularisation) and a generator
    update through the frozen critic. Minibatch stddev is off: its groups are per rank by design."""
    cfg = repo_config({**TINY, "model.critic_mbstd_group": 0})
    torch.manual_seed(0)
    model = VAEGAN(cfg.model, SIZE, CLASSES)
    critic = model.critic
    fixed = torch.Generator().manual_seed(1)
    real = torch.rand(BATCH, 1, SIZE, SIZE, generator=fixed) * 2 - 1
    fake = torch.rand(BATCH, 1, SIZE, SIZE, generator=fixed) * 2 - 1
    labels = torch.randint(0, CLASSES, (BATCH,), generator=fixed)
    alpha = torch.rand(BATCH, 1, 1, 1, generator=fixed)
    z = torch.randn(BATCH, model.vae.latent_dim, generator=fixed)
    local = BATCH // world.size
    mine = slice(world.rank * local, (world.rank + 1) * local)
    real, fake, labels, alpha, z = real[mine], fake[mine], labels[mine], alpha[mine], z[mine]

    def collected(params) -> torch.Tensor:
        params = list(params)
        distributed.average_gradients(params, world)
        flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
        for p in params:
            p.grad = None
        return flat

    scores = critic(torch.cat([real, fake]), model.labels(torch.cat([labels, labels])), set_sizes=(local, local))
    penalty = losses.gradient_penalty(critic, real, fake, model.labels(labels), alpha=alpha)
    (losses.critic_wasserstein(scores[:local], scores[local:], 0.001) + 10.0 * penalty).backward()
    critic_step = collected(critic.parameters())

    losses.gradient_penalty(critic, real, fake, model.labels(labels), alpha=alpha).backward()
    penalty_only = collected(critic.parameters())

    critic.requires_grad_(False)
    decoded = model.vae.decode(z, labels)
    generator_loss = torch.nn.functional.l1_loss(decoded, real) + 0.01 * losses.generator_adversarial(critic(decoded, model.labels(labels)))
    generator_loss.backward()
    generator_step = collected(model.generator_parameters())
    return {"critic_step": critic_step, "penalty_only": penalty_only, "generator_step": generator_step}


def training(world: distributed.World) -> dict:
    """The real engine, two epochs with every default on (noise, flips, minibatch stddev, penalty):
    the weights each rank ends with."""
    cfg = repo_config({**TINY, "train.batch_size": 8, "loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, SIZE, SIZE), dtype=np.uint8)
    trainer = Trainer(cfg, images, np.arange(48) % CLASSES, CLASSES, torch.device("cpu"), world)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for _ in range(2):
        losses_seen = trainer.train_epoch().losses
    return {"state": trainer.model.state_dict(), "initial": initial, "losses": losses_seen,
            "local_batch": trainer.local_batch, "steps": trainer.step}


if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    world = distributed.world_from_env()
    distributed.init(world, cuda=False)
    result = {"gradients": gradients, "training": training}[case](world)
    torch.save(result, out / f"rank{world.rank}.pt")
    distributed.shutdown(world)
