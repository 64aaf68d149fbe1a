"""CUDA paths of the engine: bf16 autocast, channels_last, fused Adam, torch.compile, checkpoints.

Skipped on machines without a GPU (CI); run them wherever one is present: ``pytest tests/test_cuda.py``.
"""

import numpy as np
import pytest
import torch

from brainsynth.checkpoint import restore_training_state, save_model_file, save_training_state
from brainsynth.config import with_overrides
from brainsynth.inference import SynthModel
from brainsynth.training.engine import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def test_bf16_training_on_cuda_lowers_reconstruction_and_stays_finite(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(with_overrides(tiny_cfg, {"train.hflip": False}), images, labels, 3, CUDA)
    assert trainer.autocast["enabled"] and trainer.images.is_cuda
    assert next(trainer.model.encoder.parameters()).is_cuda
    assert trainer.opt_g.defaults.get("fused")
    first = trainer.train_epoch().losses
    for _ in range(4):
        last = trainer.train_epoch().losses
    assert all(np.isfinite(v) for v in last.values())
    assert last["rec"] < first["rec"]
    assert last["gp"] > 0 and last["critic"] != 0


def test_cuda_checkpoint_resumes_weights_optimisers_and_rng(tiny_cfg, tiny_images, tmp_path):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg, images, labels, 3, CUDA)
    trainer.train_epoch()
    save_training_state(trainer, tmp_path / "last.pt")
    saved = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    cuda_rng = torch.cuda.get_rng_state(CUDA).clone()

    torch.manual_seed(999)
    torch.cuda.manual_seed(999)
    resumed = Trainer(tiny_cfg, images, labels, 3, CUDA)
    restore_training_state(resumed, tmp_path / "last.pt")
    assert resumed.epoch == 1 and resumed.step == trainer.step
    for key, value in resumed.model.state_dict().items():
        assert value.is_cuda and torch.equal(value.cpu(), saved[key]), key
    assert torch.equal(torch.cuda.get_rng_state(CUDA), cuda_rng)
    state = resumed.opt_g.state[resumed.opt_g.param_groups[0]["params"][0]]
    assert state["exp_avg"].is_cuda
    stats = resumed.train_epoch()  # fused Adam must accept the restored state
    assert stats.epoch == 2 and all(np.isfinite(v) for v in stats.losses.values())


def test_compiled_encoder_decoder_train_on_cuda(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(with_overrides(tiny_cfg, {"train.compile": True}), images, labels, 3, CUDA)
    assert trainer.model.encoder._compiled_call_impl is not None  # compiled in place, same parameters and state-dict keys
    stats = trainer.train_epoch()
    assert all(np.isfinite(v) for v in stats.losses.values())
    samples = trainer.sample(np.array([0, 1, 2]), seed=3)
    assert samples.shape == (3, 32, 32) and samples.dtype == np.uint8


def test_model_trained_on_cuda_samples_on_cpu(tiny_cfg, tiny_images, tmp_path):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg, images, labels, 3, CUDA)
    trainer.train_epoch()
    model = trainer.model
    save_model_file(tmp_path / "model.pt", tiny_cfg.model, 32, model.n_classes, ["a", "b", "c"], model.ema_encoder, model.ema_decoder)
    on_gpu = trainer.sample(np.array([0, 1, 2]), seed=5)
    on_cpu = SynthModel.load(tmp_path / "model.pt", "cpu").sample(np.array([0, 1, 2]), seed=5)
    # Same latents from the seed; only bf16-vs-fp32 rounding separates the two devices.
    assert np.abs(on_gpu.astype(int) - on_cpu.astype(int)).mean() < 4
