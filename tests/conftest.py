import numpy as np
import pytest
import torch
from helpers import repo_config

from brainsynth.config import Config

torch.set_num_threads(2)


@pytest.fixture
def tiny_cfg() -> Config:
    """A config small enough for CPU tests: 32×32 images, narrow networks."""
    return repo_config({
        "data.image_size": 32,
        "model.latent_dim": 16,
        "model.base_channels": 8,
        "model.max_channels": 32,
        "model.cbam_res": [8, 16],
        "model.self_attention_res": [8],
        "train.batch_size": 8,
        "train.log_every": 2,
        "loss.adv_start_epoch": 0,
        "loss.kl_warmup_epochs": 0,
        "loss.gp_every": 1,
    })


@pytest.fixture
def tiny_images():
    """48 random-ish 32×32 uint8 'slices' (blobs) with 3 labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    images = []
    for i in range(48):
        cy, cx, r = rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(6, 12)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) * 200 + rng.normal(0, 10, (32, 32))
        images.append(np.clip(blob, 0, 255).astype(np.uint8))
    return np.stack(images), np.arange(48) % 3
