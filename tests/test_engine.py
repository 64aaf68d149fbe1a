import pickle

import numpy as np
import pytest
import torch

from brainsynth.checkpoint import CheckpointError, load_safe, save_atomic
from brainsynth.engine import LOSS_NAMES, DivergenceError, Trainer


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_training_steps_lower_reconstruction_loss_on_a_fixed_batch(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg.with_overrides({"loss.adv_weight": 0.0, "train.hflip": False}), images[:8], labels[:8], 3, torch.device("cpu"))
    x, y = trainer._batch(torch.arange(8))

    def rec_loss():
        acc = torch.zeros(len(LOSS_NAMES))
        trainer._train_step(x, y, 1.0, False, acc)
        return acc[1].item()

    first = rec_loss()
    for _ in range(20):
        last = rec_loss()
    assert last < 0.9 * first


@pytest.mark.parametrize("overrides", [
    {},
    {"loss.feature_weight": 0.5, "optim.n_critic": 2, "model.conditional": False},
    {"loss.gan": "hinge", "model.critic_mbstd_group": 0, "model.upsample": "nearest"},
    {"loss.class_weight": 0.5},
])
def test_adversarial_epoch_runs_and_reports_all_losses(tiny_cfg, tiny_images, overrides):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg.with_overrides(overrides), images, labels, 3, torch.device("cpu"))
    stats = trainer.train_epoch()
    assert stats.epoch == 1 and trainer.step == trainer.steps_per_epoch
    assert all(np.isfinite(v) for v in stats.losses.values())
    assert stats.losses["critic"] != 0 and stats.losses["adv_g"] != 0
    if trainer.cfg.loss.gan == "wgan-gp":
        assert stats.losses["gp"] > 0
    with_classifier = trainer.cfg.loss.class_weight > 0
    assert (trainer.model.classifier is not None) == with_classifier
    assert (stats.losses["cls_g"] > 0) == with_classifier and (stats.losses["cls_real"] > 0) == with_classifier
    samples = trainer.sample(np.array([0, 1, 2]), seed=1)
    assert samples.shape == (3, 32, 32) and samples.dtype == np.uint8
    assert np.array_equal(samples, trainer.sample(np.array([0, 1, 2]), seed=1))


@pytest.mark.parametrize("overrides", [{}, {"loss.class_weight": 0.5}])
def test_resume_after_interrupt_matches_uninterrupted_run(tiny_cfg, tiny_images, tmp_path, overrides):
    images, labels = tiny_images
    tiny_cfg = tiny_cfg.with_overrides(overrides)
    straight = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    straight.train_epoch()
    straight.train_epoch()

    first = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    first.train_epoch()
    first.save(tmp_path / "last.pt")
    del first
    torch.manual_seed(12345)  # a fresh process would have a different global RNG state
    resumed = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    resumed.restore(tmp_path / "last.pt")
    assert resumed.epoch == 1
    resumed.train_epoch()

    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.history == straight.history


def test_cpu_training_is_deterministic(tiny_cfg, tiny_images):
    images, labels = tiny_images
    runs = [Trainer(tiny_cfg, images, labels, 3, torch.device("cpu")).train_epoch().losses for _ in range(2)]
    assert runs[0] == runs[1]


def test_divergence_stops_training_with_a_clear_error(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg.with_overrides({"loss.adv_weight": 0.0}), images, labels, 3, torch.device("cpu"))
    with torch.no_grad():
        trainer.model.decoder.fc.weight.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="non-finite loss at epoch 1.*rec=nan"):
        trainer.train_epoch()
    assert trainer.epoch == 0  # the epoch was not counted, so no checkpoint of it would be written


class _Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_checkpoint_loading_rejects_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Exploit()}, handle)
    torch.save({"x": _Exploit()}, tmp_path / "evil2.pt")
    for bad in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused or unreadable"):
            load_safe(bad)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"a": torch.ones(2)}, path)
    assert torch.equal(load_safe(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
