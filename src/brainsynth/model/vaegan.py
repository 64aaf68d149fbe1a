"""The VAE-GAN: encoder, decoder (= the GAN generator), Wasserstein critic, the ``VAE`` view of an
encoder/decoder pair and the ``VAEGAN`` container with its EMA copy.

Shapes use B = batch, C = channels, S = image side (a power of two), Z = latent size,
K = number of classes (0 = unconditional). Images are (B, 1, S, S) in [-1, 1].
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from brainsynth.config import ModelConfig
from brainsynth.model.blocks import CBAM, MinibatchStd, ResBlock, SelfAttention, _groups, channel_plan


class Encoder(nn.Module):
    """(B, 1, S, S) [, labels (B,)] → mu (B, Z), logvar (B, Z), logvar clamped to the config's range.

    Z = ``latent_size(cfg, S)``: the vector latent (``cfg.latent_dim``, from the 4×4 features through a
    linear head), then, with ``cfg.spatial_latent_channels`` = C > 0, a spatial latent of C maps at
    R = S / ``cfg.spatial_latent_factor`` (from the R×R features by a 3×3 conv), flattened: Z = latent_dim + C·R².
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int = 0):
        super().__init__()
        chans = channel_plan(cfg, image_size)
        self.stem = nn.Conv2d(1, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        res = image_size
        self.spatial_tap = -1  # index of the last block at the spatial latent's resolution
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(ResBlock(c_in, c_out, "down", norm=True, act=nn.SiLU()))
            res //= 2
            if res in cfg.cbam_res:
                blocks.append(CBAM(c_out, cfg.cbam_reduction))
            if res in cfg.self_attention_res:
                blocks.append(SelfAttention(c_out))
            if res == image_size // cfg.spatial_latent_factor:
                self.spatial_tap, tap_channels = len(blocks) - 1, c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_norm = nn.GroupNorm(_groups(chans[-1]), chans[-1])
        embed_dim = cfg.class_embed_dim if n_classes else 0
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        self.head = nn.Linear(chans[-1] * 16 + embed_dim, 2 * cfg.latent_dim)
        self.spatial_head = None
        if cfg.spatial_latent_channels:
            if self.spatial_tap < 0:
                raise ValueError(f"model.spatial_latent_factor {cfg.spatial_latent_factor} leaves the image size {image_size} below 4×4")
            self.spatial_head = nn.Sequential(nn.GroupNorm(_groups(tap_channels), tap_channels), nn.SiLU(),
                                              nn.Conv2d(tap_channels, 2 * cfg.spatial_latent_channels, 3, padding=1))
        self.logvar_range = (cfg.logvar_min, cfg.logvar_max)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        spatial = None
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index == self.spatial_tap and self.spatial_head is not None:
                spatial = self.spatial_head(h)  # (B, 2C, R, R)
        h = F.silu(self.out_norm(h)).flatten(1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(labels)], dim=1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        if spatial is not None:
            spatial_mu, spatial_logvar = spatial.chunk(2, dim=1)
            mu = torch.cat([mu, spatial_mu.flatten(1).to(mu.dtype)], dim=1)
            logvar = torch.cat([logvar, spatial_logvar.flatten(1).to(logvar.dtype)], dim=1)
        return mu, logvar.clamp(*self.logvar_range)


def latent_size(cfg: ModelConfig, image_size: int) -> int:
    """Numbers in z: the vector latent plus the flattened spatial latent (``Encoder``)."""
    return cfg.latent_dim + cfg.spatial_latent_channels * (image_size // cfg.spatial_latent_factor) ** 2


class Decoder(nn.Module):
    """The generator: z (B, Z) [, labels (B,)] → image (B, 1, S, S) in [-1, 1].

    The same network decodes encoder samples (reconstructions) and prior samples. With a spatial latent (see
    ``Encoder``) its C maps join the features at resolution R through a 3×3 conv, added as a residual.
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int = 0):
        super().__init__()
        chans = channel_plan(cfg, image_size)[::-1]
        embed_dim = cfg.class_embed_dim if n_classes else 0
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        self.fc = nn.Linear(cfg.latent_dim + embed_dim, chans[0] * 16)
        blocks: list[nn.Module] = []
        res = 4
        self.spatial_tap = -2  # inject after this block (-1: right after fc, at 4×4)
        tap_channels = chans[0]
        spatial_res = image_size // cfg.spatial_latent_factor
        if spatial_res == 4:
            self.spatial_tap = -1
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(ResBlock(c_in, c_out, "up", norm=True, act=nn.SiLU(), upsample=cfg.upsample))
            res *= 2
            if res in cfg.cbam_res:
                blocks.append(CBAM(c_out, cfg.cbam_reduction))
            if res in cfg.self_attention_res:
                blocks.append(SelfAttention(c_out))
            if res == spatial_res and res < image_size:
                self.spatial_tap, tap_channels = len(blocks) - 1, c_out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.GroupNorm(_groups(chans[-1]), chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], 1, 3, padding=1))
        self.first_channels = chans[0]
        self.vector_dim = cfg.latent_dim
        self.spatial_shape = (cfg.spatial_latent_channels, spatial_res, spatial_res)
        self.inject = None
        if cfg.spatial_latent_channels:
            if self.spatial_tap == -2:
                raise ValueError(f"model.spatial_latent_factor {cfg.spatial_latent_factor} leaves the image size {image_size} below 4×4")
            self.inject = nn.Conv2d(tap_channels + cfg.spatial_latent_channels, tap_channels, 3, padding=1)
        self.latent_dim = latent_size(cfg, image_size)
        self.image_size = image_size

    def _inject(self, h: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        return h + self.inject(torch.cat([h, spatial.to(h.dtype)], dim=1))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        spatial = None
        if self.inject is not None:
            spatial = z[:, self.vector_dim :].reshape(z.shape[0], *self.spatial_shape)
            z = z[:, : self.vector_dim]
        embedding = None
        if self.embed is not None:
            embedding = self.embed(labels)
            z = torch.cat([z, embedding.to(z.dtype)], dim=1)
        h = self.fc(z).view(z.shape[0], self.first_channels, 4, 4)
        if self.spatial_tap == -1 and spatial is not None:
            h = self._inject(h, spatial)
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index == self.spatial_tap and spatial is not None:
                h = self._inject(h, spatial)
        return torch.tanh(self.out(h))


class Critic(nn.Module):
    """Wasserstein critic: (B, 1, S, S) [, labels (B,)] → raw score (B,). No sigmoid, no BatchNorm.

    Class conditioning by projection (Miyato & Koyama 2018): score = w·h + <embed(y), h>.
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int = 0):
        super().__init__()
        chans = channel_plan(cfg, image_size)
        act = nn.LeakyReLU(0.2)
        self.stem = nn.Conv2d(1, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        res = image_size
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(ResBlock(c_in, c_out, "down", norm=False, act=act))
            res //= 2
            if res in cfg.self_attention_res:
                blocks.append(SelfAttention(c_out))
        self.blocks = nn.ModuleList(blocks)
        self.act = act
        self.mbstd = MinibatchStd(cfg.critic_mbstd_group) if cfg.critic_mbstd_group > 1 else None
        self.final = nn.Conv2d(chans[-1] + (1 if self.mbstd else 0), chans[-1], 3, padding=1)
        self.linear = nn.Linear(chans[-1], 1)
        self.embed = nn.Embedding(n_classes, chans[-1]) if n_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, set_sizes: tuple[int, ...] | None = None) -> torch.Tensor:
        """``set_sizes``: sizes of the consecutive sets that make up the batch (default: one set),
        so that one call can judge several sets with per-set minibatch statistics."""
        if set_sizes is not None and sum(set_sizes) != x.shape[0]:
            raise ValueError(f"set_sizes {set_sizes} do not add up to the batch size {x.shape[0]}")
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        if self.mbstd is not None:
            h = self.mbstd(h, set_sizes)
        pooled = self.act(self.final(self.act(h))).sum(dim=(2, 3))  # (B, C)
        score = self.linear(pooled).squeeze(1)
        if self.embed is not None:
            score = score + (self.embed(labels) * pooled).sum(dim=1)
        return score

class VAE:
    """The one meaning of encode, sample and reconstruct, over an encoder and its decoder (MONAI's
    ``AutoencoderKL`` is the model). A view, not a module: the weights stay in ``VAEGAN.encoder``/
    ``decoder`` (or their EMA copies, or a model file's), so state-dict keys and checkpoints are unchanged.

    x: (B, 1, S, S) in [-1, 1]; y: (B,) int, ignored by unconditional nets; z, mu, logvar: (B, Z).
    """

    def __init__(self, encoder: Encoder, decoder: Decoder):
        self.encoder, self.decoder = encoder, decoder
        self.conditional = decoder.embed is not None
        self.latent_dim, self.image_size = decoder.latent_dim, decoder.image_size

    def labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        return y if self.conditional else None

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x → mu, logvar of q(z | x, y), float32."""
        mu, logvar = self.encoder(x, self.labels(y))
        return mu.float(), logvar.float()

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a posterior sample (training)."""
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z → images (B, 1, S, S) in [-1, 1]."""
        return self.decoder(z, self.labels(y))

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean: the deterministic reconstruction every metric and figure uses."""
        mu, _ = self.encode(x, y)
        return self.decode(mu.to(x.dtype), y)

    def sample(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode prior draws z = noise ~ N(0, I) (B, Z) (the caller draws it, for seeding)."""
        return self.decode(noise, y)

    def eval(self) -> "VAE":
        self.encoder.eval()
        self.decoder.eval()
        return self


class VAEGAN(nn.Module):
    """The model: encoder, decoder (= generator) and critic, and an EMA copy of encoder and decoder
    for sampling. ``vae`` and ``ema_vae`` are the live and the EMA pair seen through the ``VAE`` API.

    ``n_classes`` is the number of classes the nets are conditioned on (0 = unconditional).
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.latent_dim = latent_size(cfg, image_size)
        self.encoder = Encoder(cfg, image_size, n_classes)
        self.decoder = Decoder(cfg, image_size, n_classes)
        self.critic = Critic(cfg, image_size, n_classes)
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_decoder = copy.deepcopy(self.decoder).requires_grad_(False)

    @property
    def vae(self) -> VAE:
        return VAE(self.encoder, self.decoder)

    @property
    def ema_vae(self) -> VAE:
        return VAE(self.ema_encoder, self.ema_decoder)

    def labels(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The labels the nets are given: ``y`` when conditional, else None."""
        return y if self.n_classes else None

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.decoder.parameters())
