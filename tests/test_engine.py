import pickle

import numpy as np
import pytest
import torch

from brainsynth.checkpoint import CheckpointError, load_safe, restore_training_state, save_atomic, save_training_state
from brainsynth.config import with_overrides
from brainsynth.training.engine import DivergenceError, LossMeter, Trainer


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_training_steps_lower_reconstruction_loss_on_a_fixed_batch(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(with_overrides(tiny_cfg, {"loss.adv_weight": 0.0, "train.hflip": False}), images[:8], labels[:8], 3, torch.device("cpu"))
    x, y = trainer.batch(torch.arange(8))

    def rec_loss():
        return trainer.train_step(x, y, progress=1.0).means()["rec"]

    first = rec_loss()
    for _ in range(20):
        last = rec_loss()
    assert last < 0.9 * first


@pytest.mark.parametrize("overrides", [
    {},
    {"optim.n_critic": 2, "model.conditional": False},
    {"model.critic_mbstd_group": 0, "model.upsample": "nearest"},
])
def test_adversarial_epoch_runs_and_reports_all_losses(tiny_cfg, tiny_images, overrides):
    images, labels = tiny_images
    trainer = Trainer(with_overrides(tiny_cfg, overrides), images, labels, 3, torch.device("cpu"))
    stats = trainer.train_epoch()
    assert stats.epoch == 1 and trainer.step == trainer.steps_per_epoch
    assert all(np.isfinite(v) for v in stats.losses.values())
    assert stats.losses["critic"] != 0 and stats.losses["adv_g"] != 0 and stats.losses["gp"] > 0
    assert {"rec", "kl", "adv_g", "critic", "gp", "w_distance", "loss_g"} <= stats.reported
    samples = trainer.sample(np.array([0, 1, 2]), seed=1)
    assert samples.shape == (3, 32, 32) and samples.dtype == np.uint8
    assert np.array_equal(samples, trainer.sample(np.array([0, 1, 2]), seed=1))


@pytest.mark.parametrize("overrides", [{}, {"optim.n_critic": 2}])
def test_resume_after_interrupt_matches_uninterrupted_run(tiny_cfg, tiny_images, tmp_path, overrides):
    images, labels = tiny_images
    tiny_cfg = with_overrides(tiny_cfg, overrides)
    straight = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    straight.train_epoch()
    straight.train_epoch()

    first = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    first.train_epoch()
    save_training_state(first, tmp_path / "last.pt")
    del first
    torch.manual_seed(12345)  # a fresh process would have a different global RNG state
    resumed = Trainer(tiny_cfg, images, labels, 3, torch.device("cpu"))
    restore_training_state(resumed, tmp_path / "last.pt")
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
    trainer = Trainer(with_overrides(tiny_cfg, {"loss.adv_weight": 0.0}), images, labels, 3, torch.device("cpu"))
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
        with pytest.raises(CheckpointError, match=r"not a plain-tensor checkpoint .*refused for safety\)$") as err:
            load_safe(bad)
        assert "weights_only" not in str(err.value)  # never pass on PyTorch's advice to turn the safety off
    (tmp_path / "text.pt").write_text("hello, not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil2.pt").read_bytes()[:50])
    for bad in ("text.pt", "empty.pt", "cut.pt"):
        with pytest.raises(CheckpointError, match=r"not a checkpoint file \(unreadable, truncated or another format\)$"):
            load_safe(tmp_path / bad)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_atomic({"a": torch.ones(2)}, path)
    assert torch.equal(load_safe(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_step_curves_are_window_means_and_cover_every_step(tiny_cfg, tiny_images):
    """Regression: the step-level window was divided by a full train.log_every even when it held
    fewer steps (the last window of an epoch), and the last steps of an epoch were never logged."""
    images, labels = tiny_images  # 48 images, batch 8 → 6 steps per epoch; windows of 4 → 4 + 2
    trainer = Trainer(with_overrides(tiny_cfg, {"train.log_every": 4}), images, labels, 3, torch.device("cpu"))
    per_step = []
    original = trainer.train_step

    def recording_step(*args, **kwargs):
        meter = original(*args, **kwargs)
        per_step.append(meter.means())
        return meter

    trainer.train_step = recording_step
    logged = []
    for _ in range(2):
        trainer.train_epoch(on_log=lambda step, means: logged.append((step, means)))
    assert [step for step, _ in logged] == [4, 6, 8, 12]  # every 4th step and the last step of each epoch
    windows = [per_step[0:4], per_step[4:6], per_step[6:8], per_step[8:12]]
    for (_, means), steps in zip(logged, windows):
        for name in ("rec", "kl", "critic"):
            assert means[name] == pytest.approx(np.mean([s[name] for s in steps]), rel=1e-5), name
    assert trainer.history[-1]["rec"] == pytest.approx(np.mean([s["rec"] for s in per_step[6:]]), rel=1e-5)


def test_gp_every_counts_critic_updates_and_gp_is_not_under_reported(tiny_cfg, tiny_images):
    """Regression: gp_every counted generator steps, so with n_critic > 1 all or none of a step's
    critic updates got the penalty, and the logged gp was divided by the updates without one."""
    images, labels = tiny_images
    cfg = with_overrides(tiny_cfg, {"optim.n_critic": 2, "loss.gp_every": 2})
    trainer = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    critic = next(part for part in trainer.parts if part.name == "critic")
    penalised = []
    original = critic._update_once

    def recording_critic(*args, **kwargs):
        out = original(*args, **kwargs)
        penalised.append("gp" in out)
        return out

    critic._update_once = recording_critic
    x, y = trainer.batch(torch.arange(8))
    meters = [trainer.train_step(x, y, progress=1.0) for _ in range(3)]
    assert penalised == [True, False] * 3  # every other critic update, within each step
    assert critic.updates == 6
    for meter in meters:
        assert meter.counts["gp"] == 1 and meter.counts["critic"] == 2
        assert meter.means()["gp"] == pytest.approx(meter.sums["gp"].item())  # the mean of the penalised updates


def test_model_api_shapes(tiny_cfg):
    from brainsynth.model.vaegan import VAEGAN

    model = VAEGAN(tiny_cfg.model, 32, 3)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    mu, logvar = model.vae.encode(x, y)
    assert mu.shape == logvar.shape == (4, model.vae.latent_dim) and model.vae.latent_dim == tiny_cfg.model.latent_dim + 8 * 8
    model.eval()
    recon = model.vae.reconstruct(x, y)
    assert recon.shape == x.shape and recon.abs().max() <= 1
    assert torch.equal(recon, model.vae.reconstruct(x, y))  # the posterior mean: deterministic
    assert torch.equal(recon, model.vae.decode(mu, y))
    assert model.vae.sample(torch.randn(5, model.vae.latent_dim), torch.tensor([0, 1, 2, 0, 1])).shape == (5, 1, 32, 32)


def test_validation_swd_uses_the_same_settings_as_the_test_swd(tiny_cfg, tiny_images):
    """Regression: validation scored SWD with 64 patches / 256 directions and evaluate with 128 / 512,
    so val_swd and swd were on different scales. Both now read swd.* from params.yaml."""
    from brainsynth import metrics
    from brainsynth.training.objective import validation_metrics

    images, labels = tiny_images
    cfg = with_overrides(tiny_cfg, {"swd.patches_per_image": 24, "swd.directions": 40, "tune.eval_images": 16})
    trainer = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    scores = validation_metrics(trainer, images, labels, cfg)
    pick = np.sort(np.random.default_rng(cfg.seed).choice(len(images), 16, replace=False))
    samples = trainer.sample(labels[pick], cfg.seed)
    assert scores["val_swd"] == metrics.swd(images[pick], samples, cfg.seed, 24, 40)["swd"]
    assert scores["val_swd"] != metrics.swd(images[pick], samples, cfg.seed, 64, 256)["swd"]


def test_the_time_left_follows_the_recent_epochs_not_the_cheap_first_one():
    """The first epoch runs without the critic (cheaper): the estimate uses the recent epochs."""
    from brainsynth.pipeline.train import estimate_remaining

    ends = [0.0, 25.0, 78.0, 132.0, 186.0]  # 25 s, then 53–54 s per epoch
    assert estimate_remaining(ends, 11) == pytest.approx((186.0 - 25.0) / 3 * 11)
    assert estimate_remaining([0.0, 30.0], 2) == 60.0  # one epoch so far: its time


def test_grade_levers_train_report_and_resume(tiny_cfg, tiny_images, tmp_path):
    """Grade consistency (frozen blurred ensemble on reconstructions, swaps and prior samples), the
    Fader adversary on z and the spatial latent: each term is reported, the ensemble stays frozen,
    swaps carry another grade, and a resumed run matches an uninterrupted one."""
    images, labels = tiny_images
    cfg = with_overrides(tiny_cfg, {"loss.consistency.weight": 0.1, "loss.consistency.epochs": 1, "loss.consistency.ramp_epochs": 0,
                                    "loss.fader.weight": 0.05, "model.spatial_latent_channels": 2, "model.spatial_latent_factor": 4,
                                    "evaluate.classifier.min_steps": 5})
    probe = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    assert probe.model.vae.latent_dim == 16 + 2 * 8 * 8
    x, y = probe.batch(torch.arange(8))
    step = probe.decode_batch(x, y, prior=0.5, swaps=0.5)
    assert step.decoded.shape == (12, 1, 32, 32)  # reconstructions and prior samples: what the critic sees
    assert step.swapped.shape == (4, 1, 32, 32) and bool((step.swapped_labels != y[:4]).all())

    straight = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    stats = straight.train_epoch()
    assert {"grade", "latent_adv", "latent_cls"} <= stats.reported
    ensemble = next(part for part in straight.parts if part.name == "consistency").ensemble
    frozen = {k: v.clone() for k, v in ensemble.state_dict().items()}
    straight.train_epoch()
    assert all(torch.equal(v, ensemble.state_dict()[k]) for k, v in frozen.items())

    first = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    first.train_epoch()
    save_training_state(first, tmp_path / "last.pt")
    resumed = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    restore_training_state(resumed, tmp_path / "last.pt")
    resumed.train_epoch()
    expected, got = _weights(straight), _weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_levers_off_compute_no_lever_term(tiny_cfg, tiny_images):
    """With grade consistency and the Fader at weight 0 (and a single class, where neither means
    anything), their terms are neither computed nor reported."""
    images, labels = tiny_images
    off = with_overrides(tiny_cfg, {"loss.consistency.weight": 0.0, "loss.fader.weight": 0.0})
    assert not {"grade", "latent_adv", "latent_cls", "ffl"} & Trainer(off, images, labels, 3, torch.device("cpu")).train_epoch().reported
    one_class = Trainer(tiny_cfg, images, np.zeros_like(labels), 1, torch.device("cpu"))
    assert not {"grade", "latent_adv", "latent_cls"} & one_class.train_epoch().reported


def test_focal_frequency_term_trains_and_is_reported(tiny_cfg, tiny_images):
    """The focal frequency loss on reconstructions is reported as its own term and changes what
    the decoder learns."""
    images, labels = tiny_images
    base = with_overrides(tiny_cfg, {"loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    on = Trainer(with_overrides(base, {"loss.focal_frequency_weight": 1.0}), images, labels, 3, torch.device("cpu"))
    stats = on.train_epoch()
    assert "ffl" in stats.reported and stats.losses["ffl"] > 0
    fixed = Trainer(base, images, labels, 3, torch.device("cpu"))
    fixed.train_epoch()
    moved = _weights(on)
    assert not all(torch.equal(moved[k], v) for k, v in _weights(fixed).items() if k.startswith("decoder."))


def test_channels_last_auto_trains_nhwc_on_the_cpu_with_the_same_numbers(tiny_cfg, tiny_images):
    """``train.channels_last: auto`` trains in NHWC on the CPU (oneDNN's faster layout here) and
    computes what NCHW computes: the same losses, to float rounding, over a few full steps."""
    images, labels = tiny_images
    cfg = with_overrides(tiny_cfg, {"loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    losses_by_layout = {}
    for setting, layout in (("auto", torch.channels_last), (False, torch.contiguous_format)):
        trainer = Trainer(with_overrides(cfg, {"train.channels_last": setting}), images, labels, 3, torch.device("cpu"))
        x, y = trainer.batch(torch.arange(8))
        assert x.is_contiguous(memory_format=layout) and trainer.model.decoder.out[-1].weight.is_contiguous(memory_format=layout)
        meter = LossMeter()
        for _ in range(3):
            meter.merge(trainer.train_step(x, y, 1.0))
        losses_by_layout[setting] = meter.means()
    assert losses_by_layout["auto"].keys() == losses_by_layout[False].keys()
    for name, value in losses_by_layout[False].items():
        assert losses_by_layout["auto"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name
