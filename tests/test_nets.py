import math
from pathlib import Path

import pytest
import torch
from helpers import repo_config
from torch import nn

from brainsynth.classifiers.slice import SliceClassifier
from brainsynth.model.blocks import CBAM, ChannelAttention, MinibatchStd, ResBlock, SelfAttention, SpatialAttention
from brainsynth.model.vaegan import Critic, Decoder, Encoder, latent_size
from brainsynth.training import losses


@pytest.mark.parametrize("block", [ChannelAttention(16, 4), SpatialAttention(), CBAM(16, 4), SelfAttention(16)])
def test_attention_blocks_keep_shape_and_pass_gradients(block):
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def model_config(**overrides):
    return repo_config({f"model.{k}": v for k, v in overrides.items()}).model


def test_self_attention_starts_as_identity_and_learns_a_gate():
    block = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)  # gate initialised to 0
    block(x).sum().backward()
    assert block.gate.grad is not None


@pytest.mark.parametrize("resample,shape", [("down", (2, 12, 4, 4)), ("up", (2, 12, 16, 16))])
def test_resblock_resamples(resample, shape):
    block = ResBlock(8, 12, resample, norm=True, act=nn.SiLU())
    assert block(torch.randn(2, 8, 8, 8)).shape == shape


@pytest.mark.parametrize("size,n_classes", [(32, 0), (32, 3), (64, 2)])
def test_encoder_decoder_critic_shapes_and_gradients(size, n_classes):
    cfg = model_config(latent_dim=8, base_channels=8, max_channels=32, cbam_res=[8], self_attention_res=[8])
    enc, dec, critic = Encoder(cfg, size, n_classes), Decoder(cfg, size, n_classes), Critic(cfg, size, n_classes)
    x = torch.rand(3, 1, size, size) * 2 - 1
    y = torch.tensor([0, 1, 1]) % max(n_classes, 1) if n_classes else None
    mu, logvar = enc(x, y)
    assert mu.shape == logvar.shape == (3, latent_size(cfg, size)) and latent_size(cfg, size) == 8 + (size // 4) ** 2  # vector + spatial
    assert logvar.min() >= cfg.logvar_min and logvar.max() <= cfg.logvar_max
    out = dec(mu, y)
    assert out.shape == x.shape and out.abs().max() <= 1
    score = critic(out, y)
    assert score.shape == (3,)
    score.sum().backward()
    for net in (enc, dec, critic):
        grads = [p.grad for p in net.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_critic_is_a_raw_wasserstein_score():
    cfg = model_config(latent_dim=8, base_channels=8, max_channels=32)
    critic = Critic(cfg, 32, 0)
    assert not any(isinstance(m, (nn.Sigmoid, nn.BatchNorm2d, nn.BatchNorm1d)) for m in critic.modules())
    with torch.no_grad():
        critic.linear.weight.mul_(1e3)
    scores = critic(torch.rand(16, 1, 32, 32) * 2 - 1)
    assert scores.abs().max() > 1.0  # unbounded: not squashed into (0, 1)


def test_gradient_penalty_finite_and_positive():
    cfg = model_config(latent_dim=8, base_channels=8, max_channels=32, self_attention_res=[8])
    critic = Critic(cfg, 32, 3)
    real, fake = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    gp = losses.gradient_penalty(critic, real, fake, torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(gp) and gp > 0
    gp.backward()  # double backward through attention works
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in critic.parameters())


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    assert losses.kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)).item() == pytest.approx(0.0)
    assert losses.kl_divergence(torch.ones(4, 8), torch.zeros(4, 8)).item() == pytest.approx(4.0)


def test_minibatch_std_reports_diversity_per_group():
    layer = MinibatchStd(group=4)
    same = torch.ones(8, 3, 4, 4)
    varied = torch.randn(8, 3, 4, 4)
    out_same, out_varied = layer(same), layer(varied)
    assert out_same.shape == (8, 4, 4, 4)
    assert out_same[:, 3].abs().max() < 1e-3  # identical samples: no spread
    assert out_varied[:, 3].min() > 0.3


def test_one_critic_call_judges_several_sets_like_separate_calls():
    """The engine scores real images, reconstructions and prior samples in one critic call; with
    set_sizes the minibatch-stddev groups stay inside each set, so a collapsed set is still seen
    as collapsed next to a diverse one, exactly as in separate calls."""
    cfg = model_config(latent_dim=8, base_channels=8, max_channels=32, self_attention_res=[8], critic_mbstd_group=4)
    critic = Critic(cfg, 32, 3).eval()
    diverse = torch.rand(6, 1, 32, 32) * 2 - 1
    collapsed = (torch.rand(1, 1, 32, 32) * 2 - 1).expand(2, 1, 32, 32)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        together = critic(torch.cat([diverse, collapsed]), labels, set_sizes=(6, 2))
        apart = torch.cat([critic(diverse, labels[:6]), critic(collapsed, labels[6:])])
        mixed = critic(torch.cat([diverse, collapsed]), labels)  # one set of 8: a group of 4 straddles both
    assert torch.allclose(together, apart, atol=1e-5)
    assert not torch.allclose(together[6:], mixed[6:], atol=1e-3)
    with pytest.raises(ValueError, match="set_sizes"):
        critic(diverse, labels[:6], set_sizes=(4, 1))


def test_spatial_latent_model_file_round_trip_and_old_files(tmp_path, tiny_cfg):
    """A model with a spatial latent samples from z ~ N(0, I) of its full size after a round trip
    through the model file."""
    from brainsynth.checkpoint import save_model_file
    from brainsynth.inference import SynthModel
    from brainsynth.model.vaegan import Decoder, Encoder

    cfg = tiny_cfg.model.model_copy(update={"spatial_latent_channels": 1, "spatial_latent_factor": 2})
    encoder, decoder = Encoder(cfg, 32, 3), Decoder(cfg, 32, 3)
    mu, logvar = encoder(torch.randn(2, 1, 32, 32), torch.tensor([0, 2]))
    assert mu.shape == logvar.shape == (2, cfg.latent_dim + 16 * 16)  # 32 px / factor 2
    assert decoder(mu, torch.tensor([0, 2])).shape == (2, 1, 32, 32)
    save_model_file(tmp_path / "m.pt", cfg, 32, 3, ["a", "b", "c"], encoder, decoder)
    model = SynthModel.load(tmp_path / "m.pt")
    assert model.vae.latent_dim == cfg.latent_dim + 256 and model.sample([0, 1, 2], seed=3).shape == (3, 32, 32)


@pytest.mark.parametrize("size, sigma", [(64, 1.0), (16, 1.0), (32, 2.0), (8, 0.5)])
def test_matrix_blur_is_torchvisions_gaussian_blur(size, sigma):
    """The consistency ensemble's blur (two matrix products, for CPU speed) is torchvision's
    reflect-padded Gaussian blur with its 2⌈3σ⌉+1 taps, to float rounding, and blurs nothing at σ 0."""
    from torchvision.transforms.v2.functional import gaussian_blur as reference

    from brainsynth.classifiers.ensemble import gaussian_blur

    x = torch.rand(3, 1, size, size) * 2 - 1
    taps = 2 * math.ceil(3 * sigma) + 1
    assert torch.allclose(gaussian_blur(x, sigma), reference(x, [taps, taps], [sigma, sigma]), atol=1e-6)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    with pytest.raises(ValueError, match="larger than"):
        gaussian_blur(torch.zeros(1, 1, 4, 4), 2.0)


def test_frozen_ensemble_runs_as_one_network_with_the_members_mean_logits():
    """BlurredEnsemble folds BatchNorm and stacks its members side by side (grouped convolutions,
    one call): its logits are the mean of the members' on the blurred images, for one member too,
    and its input gradient flows while its weights stay frozen."""
    from brainsynth.classifiers.ensemble import BlurredEnsemble, gaussian_blur

    torch.manual_seed(0)
    members = [SliceClassifier(3, width=4, dropout=0.3) for _ in range(3)]
    for member in members:  # non-trivial running statistics
        member.train()
        for _ in range(3):
            member(torch.randn(8, 1, 32, 32) * 2)
        member.eval()
    x = torch.randn(5, 1, 32, 32, requires_grad=True)
    for count in (1, 3):
        ensemble = BlurredEnsemble(members[:count], 1.0)
        expected = torch.stack([m(gaussian_blur(x, 1.0)) for m in members[:count]]).mean(dim=0)
        assert torch.allclose(ensemble(x), expected, atol=1e-5)
    ensemble.train()
    assert not ensemble.training and not any(p.requires_grad for p in ensemble.parameters())
    ensemble(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_focal_frequency_loss_weighs_the_worst_rendered_frequencies():
    """Zero for a perfect reconstruction; a reconstruction missing fine detail (a checkerboard) costs
    more than one off by the same L1 in a smooth offset, which plain L1 scores alike."""
    target = torch.zeros(2, 1, 16, 16)
    target[..., ::2, ::2] = 0.5
    assert losses.focal_frequency(target, target) == 0
    smooth_miss = target + (target.mean() - target).abs().mean()  # the same mean |error|, no detail lost
    detail_miss = torch.full_like(target, target.mean().item())  # the checkerboard averaged away
    assert (smooth_miss - target).abs().mean() == pytest.approx((detail_miss - target).abs().mean().item())
    assert losses.focal_frequency(detail_miss, target) > losses.focal_frequency(smooth_miss, target)


def test_model_files_of_earlier_versions_load_or_say_why_not(tmp_path):
    """A model file written before options were removed loads when it used them at their inert
    values (the v1 fixture: no class-conditional norm, the standard prior); one written with such an
    option on fails with one line naming the option and the file's version."""
    from brainsynth.checkpoint import load_model_file, load_safe, save_atomic
    from brainsynth.errors import CheckpointError

    fixture = Path(__file__).parent / "data" / "model_v1.pt"
    stored = load_model_file(fixture)
    assert stored.model.spatial_latent_channels == 0 and stored.model.latent_dim == 4 and stored.n_classes == 2
    payload = load_safe(fixture)
    payload["config"]["model"]["class_norm"] = True
    save_atomic(payload, tmp_path / "class_norm.pt")
    with pytest.raises(CheckpointError, match=r"model.class_norm = True.*brainsynth-model-v1"):
        load_model_file(tmp_path / "class_norm.pt")
