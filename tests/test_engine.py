import pickle

import numpy as np
import pytest
import torch

from brainsynth.checkpoint import CheckpointError, load_safe, restore_training_state, save_atomic, save_training_state
from brainsynth.engine import DivergenceError, Trainer
from brainsynth.meters import LossMeter


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_training_steps_lower_reconstruction_loss_on_a_fixed_batch(tiny_cfg, tiny_images):
    images, labels = tiny_images
    trainer = Trainer(tiny_cfg.with_overrides({"loss.adv_weight": 0.0, "train.hflip": False}), images[:8], labels[:8], 3, torch.device("cpu"))
    x, y = trainer.batch(torch.arange(8))

    def rec_loss():
        return trainer.train_step(x, y, progress=1.0).means()["rec"]

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
    if trainer.loss.gan == "wgan-gp":
        assert stats.losses["gp"] > 0
    assert ("feature" in stats.reported) == (trainer.loss.feature_weight > 0)  # the Larsen term is reported on its own
    with_classifier = trainer.loss.class_weight > 0
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
    trainer = Trainer(tiny_cfg.with_overrides({"train.log_every": 4}), images, labels, 3, torch.device("cpu"))
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
    cfg = tiny_cfg.with_overrides({"optim.n_critic": 2, "loss.gp_every": 2})
    trainer = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    penalised = []
    original = trainer.critic_phase

    def recording_critic(*args, **kwargs):
        out = original(*args, **kwargs)
        penalised.append("gp" in out)
        return out

    trainer.critic_phase = recording_critic
    x, y = trainer.batch(torch.arange(8))
    meters = [trainer.train_step(x, y, progress=1.0) for _ in range(3)]
    assert penalised == [True, False] * 3  # every other critic update, within each step
    assert trainer.critic_updates == 6
    for meter in meters:
        assert meter.counts["gp"] == 1 and meter.counts["critic"] == 2
        assert meter.means()["gp"] == pytest.approx(meter.sums["gp"].item())  # the mean of the penalised updates


def test_model_api_shapes(tiny_cfg):
    from brainsynth.engine import model_for

    model = model_for(tiny_cfg, 32, 3)
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
    from brainsynth.objective import validation_metrics

    images, labels = tiny_images
    cfg = tiny_cfg.with_overrides({"swd.patches_per_image": 24, "swd.directions": 40, "tune.eval_images": 16})
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
    cfg = tiny_cfg.with_overrides({"loss.consistency_weight": 0.1, "loss.consistency_epochs": 1, "loss.consistency_ramp_epochs": 0,
                                   "loss.latent_adv_weight": 0.05, "model.spatial_latent_channels": 2, "model.spatial_latent_factor": 4,
                                   "evaluate.classifier.min_steps": 5})
    probe = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    assert probe.model.vae.latent_dim == 16 + 2 * 8 * 8
    x, y = probe.batch(torch.arange(8))
    out = probe.decode_batch(x, y, with_prior=True, with_swap=True)
    assert out.decoded.shape == (12, 1, 32, 32) and out.labels.shape == (12,)  # reconstructions and prior samples: what the critic sees
    assert out.swapped.shape == (4, 1, 32, 32) and bool((out.swapped_labels != y[:4]).all())

    straight = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    grader = {k: v.clone() for k, v in straight.grader.state_dict().items()}
    stats = straight.train_epoch()
    assert {"grade", "latent_adv", "latent_cls"} <= stats.reported
    assert all(torch.equal(v, straight.grader.state_dict()[k]) for k, v in grader.items())  # frozen
    straight.train_epoch()

    first = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    first.train_epoch()
    save_training_state(first, tmp_path / "last.pt")
    resumed = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    restore_training_state(resumed, tmp_path / "last.pt")
    resumed.train_epoch()
    expected, got = _weights(straight), _weights(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_levers_off_build_nothing_extra(tiny_cfg, tiny_images):
    """With the #24 options at 0 the model is the vector-latent VAE-GAN: no ensemble, no adversary
    on z, no spatial latent, and no such term is computed."""
    images, labels = tiny_images
    off = {"loss.consistency_weight": 0.0, "loss.latent_adv_weight": 0.0, "model.spatial_latent_channels": 0}
    plain = Trainer(tiny_cfg.with_overrides(off), images, labels, 3, torch.device("cpu"))
    assert plain.grader is None and plain.model.latent_classifier is None and plain.model.decoder.inject is None
    assert not {"grade", "latent_adv", "latent_cls", "ffl", "adv_scale"} & plain.train_epoch().reported


def test_sharper_detail_levers_train_and_report(tiny_cfg, tiny_images):
    """#24 lever 2: the focal frequency loss and VQGAN's adaptive adversarial weight are reported
    as terms; the adaptive factor is positive and finite and changes what the generator learns."""
    images, labels = tiny_images
    base = tiny_cfg.with_overrides({"loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    on = Trainer(base.with_overrides({"loss.focal_frequency_weight": 1.0, "loss.adaptive_adv": True}), images, labels, 3,
                 torch.device("cpu"))
    stats = on.train_epoch()
    assert {"ffl", "adv_scale"} <= stats.reported
    assert 0 < stats.losses["adv_scale"] < 1e4 and stats.losses["ffl"] > 0
    fixed = Trainer(base, images, labels, 3, torch.device("cpu"))
    fixed.train_epoch()
    moved = _weights(on)
    assert not all(torch.equal(moved[k], v) for k, v in _weights(fixed).items() if k.startswith("decoder."))


def test_channels_last_auto_trains_nhwc_on_the_cpu_with_the_same_numbers(tiny_cfg, tiny_images):
    """#27: ``train.channels_last: auto`` trains in NHWC on the CPU (oneDNN's faster layout here) and
    computes what NCHW computes: the same losses, to float rounding, over a few full steps."""
    images, labels = tiny_images
    cfg = tiny_cfg.with_overrides({"loss.adv_start_epoch": 0, "loss.kl_warmup_epochs": 0})
    losses_by_layout = {}
    for setting, layout in (("auto", torch.channels_last), (False, torch.contiguous_format)):
        trainer = Trainer(cfg.with_overrides({"train.channels_last": setting}), images, labels, 3, torch.device("cpu"))
        x, y = trainer.batch(torch.arange(8))
        assert x.is_contiguous(memory_format=layout) and trainer.model.decoder.out[-1].weight.is_contiguous(memory_format=layout)
        meter = LossMeter()
        for _ in range(3):
            meter.merge(trainer.train_step(x, y, 1.0))
        losses_by_layout[setting] = meter.means()
    assert losses_by_layout["auto"].keys() == losses_by_layout[False].keys()
    for name, value in losses_by_layout[False].items():
        assert losses_by_layout["auto"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


def test_the_cpu_allocator_keeps_freed_memory_for_the_next_step():
    """#27: on glibc the training process keeps freed activations for reuse (mallopt) instead of
    unmapping and faulting them in again every step: a second pass over the same large
    allocations takes almost no new page faults."""
    import resource

    from brainsynth.device import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: mallopt is unavailable")

    def faults_of_a_pass() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            block = torch.ones(4 << 20)  # 16 MiB: above glibc's default mmap threshold
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_a_pass()  # the first pass grows the heap
    assert faults_of_a_pass() < 500  # unmapped each time, 5 × 16 MiB would be ~20 000 faults


def test_learned_spatial_prior_starts_at_the_standard_prior_learns_and_reloads(tiny_cfg, tiny_images, tmp_path):
    """#24 structural arm: ``model.spatial_prior: learned`` puts p(z₂ | z₁, y) in the decoder. It
    starts as N(0, I) (the same draws as the standard prior), its parameters are trained by the
    KL and by the critic (its draws are among the prior samples judged), its KL is the one to the
    learned prior, and sampling a saved model file reproduces the trainer's samples."""
    from brainsynth import losses
    from brainsynth.checkpoint import save_model_file
    from brainsynth.inference import SynthModel

    images, labels = tiny_images
    cfg = tiny_cfg.with_overrides({"model.spatial_latent_channels": 1, "model.spatial_latent_factor": 4, "model.spatial_prior": "learned"})
    trainer = Trainer(cfg, images, labels, 3, torch.device("cpu"))
    vae = trainer.model.vae
    noise = torch.randn(6, vae.latent_dim)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(vae.prior_latent(noise, y), noise)  # zero-initialised: N(0, I) at the start

    prior = {k: v.clone() for k, v in trainer.model.decoder.prior.state_dict().items()}
    trainer.train_epoch()
    moved = trainer.model.decoder.prior.state_dict()
    assert any(not torch.equal(v, moved[k]) for k, v in prior.items())
    z = vae.prior_latent(noise, y)
    assert torch.equal(z[:, :16], noise[:, :16]) and not torch.allclose(z[:, 16:], noise[:, 16:])  # z₁ stays eps₁, z₂ is drawn from p(z₂ | z₁, y)

    x, yb = trainer.batch(torch.arange(8))
    out = trainer.decode_batch(x, yb, with_prior=True)
    prior_mu, prior_logvar = out.spatial_prior
    assert prior_mu.shape == prior_logvar.shape == (8, 64)
    forward = losses.GeneratorForward(x, yb, out.mu, out.logvar, out.decoded, out.labels, spatial_prior=out.spatial_prior)
    standard = losses.GeneratorForward(x, yb, out.mu, out.logvar, out.decoded, out.labels)
    assert losses.kl_term(forward, cfg.loss).item() != pytest.approx(losses.kl_term(standard, cfg.loss).item())
    zeros = torch.zeros_like(prior_mu)
    assert losses.kl_divergence(out.mu[:, 16:], out.logvar[:, 16:], zeros, zeros).item() == pytest.approx(
        losses.kl_divergence(out.mu[:, 16:], out.logvar[:, 16:]).item(), rel=1e-5)

    path = tmp_path / "model.pt"
    model = trainer.model
    save_model_file(path, cfg.model, 32, 3, ["a", "b", "c"], model.ema_encoder, model.ema_decoder)
    loaded = SynthModel.load(path, torch.device("cpu"), bf16=False)
    assert np.array_equal(loaded.sample(np.array([0, 1, 2]), seed=3), trainer.sample(np.array([0, 1, 2]), seed=3))


def test_learned_spatial_prior_without_a_spatial_latent_is_a_config_error(tiny_cfg):
    with pytest.raises(ValueError, match="spatial_prior 'learned' needs spatial_latent_channels > 0"):
        tiny_cfg.with_overrides({"model.spatial_latent_channels": 0, "model.spatial_prior": "learned"})
