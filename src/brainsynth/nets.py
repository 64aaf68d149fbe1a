"""Networks of the VAE-GAN: encoder, decoder (= the GAN generator) and Wasserstein critic.

Shapes use B = batch, C = channels, S = image side (a power of two), Z = latent size,
K = number of classes (0 = unconditional). Images are (B, 1, S, S) in [-1, 1].
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from brainsynth.config import ModelConfig


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling. (B, C, H, W) → (B, C, H/2, W/2)"""
    return F.avg_pool2d(x, 2)


class ChannelAttention(nn.Module):
    """CBAM channel attention: avg- and max-pooled descriptors → shared MLP → sigmoid gate.

    (B, C, H, W) → (B, C, H, W)
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: channel-wise mean and max maps → 7×7 conv → sigmoid gate.

    (B, C, H, W) → (B, C, H, W)
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(maps))


class CBAM(nn.Sequential):
    """Channel attention followed by spatial attention (Woo et al. 2018). (B, C, H, W) → same."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__(ChannelAttention(channels, reduction), SpatialAttention())


class SelfAttention(nn.Module):
    """SAGAN self-attention: query/key at C/8, value at C/2, 2×2 max-pooled keys/values,
    learned residual gate initialised to 0 (so the block starts as the identity).

    (B, C, H, W) → (B, C, H, W)
    """

    def __init__(self, channels: int, sn: bool = False):
        super().__init__()
        wrap = spectral_norm if sn else (lambda m: m)
        inner = max(channels // 8, 1)
        self.value_channels = max(channels // 2, 1)
        self.query = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.key = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.value = wrap(nn.Conv2d(channels, self.value_channels, 1, bias=False))
        self.out = wrap(nn.Conv2d(self.value_channels, channels, 1, bias=False))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        key = F.max_pool2d(self.key(x), 2).flatten(2)  # (B, C/8, HW/4)
        value = F.max_pool2d(self.value(x), 2).flatten(2)  # (B, C/2, HW/4)
        attention = torch.softmax(query @ key, dim=-1)  # (B, HW, HW/4)
        attended = (value @ attention.transpose(1, 2)).view(b, self.value_channels, h, w)
        return x + self.gate * self.out(attended)


class SliceClassifier(nn.Module):
    """Slice classifier, used twice: as the downstream-utility classifier (TRTR/TSTR, BatchNorm and
    dropout) and as the optional auxiliary classifier of class-consistent generation (the AC-GAN
    idea, Odena et al. 2017, as a separate network; GroupNorm). Four stages of two 3×3 conv + norm
    + ReLU, then 2× max-pool; global average pool; [dropout]; linear.

    ``norm="group"`` for the auxiliary classifier: it also judges batches of generated images,
    whose batch statistics must not decide the verdict. A separate network rather than a head on
    the (unnormalised, noise-fed, gradient-penalised) critic: such a head did not learn the class
    (benchmarks/README.md, "Model notes").

    (B, 1, S, S) → (B, K) logits
    """

    def __init__(self, n_classes: int, width: int = 8, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")
        layers: list[nn.Module] = []
        channels = 1
        for out in (width, 2 * width, 4 * width, 8 * width):
            for _ in range(2):
                normaliser = nn.BatchNorm2d(out) if norm == "batch" else nn.GroupNorm(_groups(out), out)
                layers += [nn.Conv2d(channels, out, 3, padding=1), normaliser, nn.ReLU(inplace=True)]
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, n_classes)) if dropout > 0 else nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class MinibatchStd(nn.Module):
    """ProGAN minibatch standard deviation: appends one feature map holding the mean std of the
    features across groups of ``group`` consecutive samples, so the critic can see a lack of
    diversity (mode collapse) that no single-sample score reveals.

    ``set_sizes`` says how the batch is made of sets judged in one call (real images,
    reconstructions, prior samples): the group size is reduced to divide every set, so no group
    mixes two sets (diverse reconstructions must not hide collapsed prior samples).

    (B, C, H, W) → (B, C + 1, H, W)
    """

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor, set_sizes: tuple[int, ...] | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        group = math.gcd(self.group, *(set_sizes or (b,)))
        y = x.float().view(-1, group, c, h, w)
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/group,)
        feature = std.repeat_interleave(group).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)
        return torch.cat([x, feature], dim=1)


class ClassConditionalNorm(nn.Module):
    """GroupNorm whose gain and bias come from a class embedding (BigGAN's conditional BatchNorm,
    StudioGAN's ``ConditionalBatchNorm2d``, with GroupNorm): gain = 1 + W·e(y), bias = W'·e(y).
    The class then acts at every scale of the decoder instead of once at its input, where the
    decoder can learn to ignore it. Gains start at 1 and biases at 0 (plain GroupNorm).

    x (B, C, H, W), embedding (B, E) → (B, C, H, W)
    """

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.gain = nn.Linear(embed_dim, channels)
        self.bias = nn.Linear(embed_dim, channels)
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(embedding)[:, :, None, None]
        return self.norm(x) * gain.to(x.dtype) + self.bias(embedding)[:, :, None, None].to(x.dtype)


class ResBlock(nn.Module):
    """Pre-activation residual block that changes resolution; GroupNorm when ``norm``.

    'down': (B, C_in, H, W) → (B, C_out, H/2, W/2); 'up': (B, C_in, H, W) → (B, C_out, 2H, 2W).
    One of the two 3×3 convolutions runs at the lower resolution, which quarters its cost
    compared with the BigGAN layout and matters on CPU, where these blocks are the whole budget.
    """

    def __init__(self, c_in: int, c_out: int, resample: str, norm: bool, act: nn.Module, sn: bool = False, upsample: str = "nearest",
                 class_embed_dim: int = 0):
        super().__init__()
        self.upsample = upsample
        if resample not in ("down", "up"):
            raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
        wrap = spectral_norm if sn else (lambda m: m)
        self.resample = resample
        mid = c_in if resample == "down" else c_out
        self.conditional = norm and class_embed_dim > 0  # ``forward(x, embedding)`` with class-conditional norms
        if self.conditional:
            self.norm1, self.norm2 = ClassConditionalNorm(c_in, class_embed_dim), ClassConditionalNorm(mid, class_embed_dim)
        else:
            self.norm1 = nn.GroupNorm(_groups(c_in), c_in) if norm else nn.Identity()
            self.norm2 = nn.GroupNorm(_groups(mid), mid) if norm else nn.Identity()
        self.conv1 = wrap(nn.Conv2d(c_in, mid, 3, padding=1))
        self.conv2 = wrap(nn.Conv2d(mid, c_out, 3, padding=1))
        self.skip = wrap(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()
        self.act = act

    def _norm(self, norm: nn.Module, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        return norm(x, embedding) if self.conditional else norm(x)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        if self.resample == "down":
            h = downsample2x(self.conv1(self.act(self._norm(self.norm1, x, embedding))))  # conv at H, then pool
            h = self.conv2(self.act(self._norm(self.norm2, h, embedding)))  # conv at H/2
            return h + self.skip(downsample2x(x))
        h = self._up(self.conv1(self.act(self._norm(self.norm1, x, embedding))))  # conv at H
        h = self.conv2(self.act(self._norm(self.norm2, h, embedding)))  # conv at 2H
        return h + self._up(self.skip(x))

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == "bilinear":
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def channel_plan(cfg: ModelConfig, image_size: int) -> list[int]:
    """Channels at each resolution from S down to 4: [c(S), c(S/2), ..., c(4)]."""
    depth = int(math.log2(image_size // 4))
    return [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(depth + 1)]


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


class SpatialPrior(nn.Module):
    """The learned prior of the spatial latent, p(z₂ | z₁, y) = N(mu, diag sigma²) (NVAE/VDVAE-style
    top-down prior): the vector latent z₁ (B, V) and the class embedding (B, E) → mu, logvar
    (B, C·R²) float32 of z₂ at C × R × R. The last conv starts at zero, so training starts from
    N(0, I), the standard prior.
    """

    def __init__(self, vector_dim: int, embed_dim: int, spatial_shape: tuple[int, int, int], logvar_range: tuple[float, float],
                 width: int = 32):
        super().__init__()
        channels, res, _ = spatial_shape
        self.width, self.logvar_range = width, logvar_range
        self.fc = nn.Linear(vector_dim + embed_dim, width * 16)
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(res // 4))):
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(nn.SiLU(), *layers)
        self.out = nn.Conv2d(width, 2 * channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, vector: torch.Tensor, embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = vector if embedding is None else torch.cat([vector, embedding.to(vector.dtype)], dim=1)
        h = self.body(self.fc(h).view(h.shape[0], self.width, 4, 4))
        mu, logvar = self.out(h).float().chunk(2, dim=1)
        return mu.flatten(1), logvar.flatten(1).clamp(*self.logvar_range)


class Decoder(nn.Module):
    """The generator: z (B, Z) [, labels (B,)] → image (B, 1, S, S) in [-1, 1].

    The same network decodes encoder samples (reconstructions) and prior samples (z ~ N(0, I), or
    with ``cfg.spatial_prior`` learned, z₂ ~ p(z₂ | z₁, y) from its ``SpatialPrior``: ``latent_from_noise``).
    With ``cfg.class_norm`` (and classes) the shared class embedding also sets the gain and bias of
    every residual block's normalisation (``ClassConditionalNorm``). With a spatial latent (see
    ``Encoder``) its C maps join the features at resolution R through a 3×3 conv, added as a residual.
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int = 0):
        super().__init__()
        chans = channel_plan(cfg, image_size)[::-1]
        embed_dim = cfg.class_embed_dim if n_classes else 0
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        self.fc = nn.Linear(cfg.latent_dim + embed_dim, chans[0] * 16)
        norm_embed = embed_dim if cfg.class_norm else 0
        blocks: list[nn.Module] = []
        res = 4
        self.spatial_tap = -2  # inject after this block (-1: right after fc, at 4×4)
        tap_channels = chans[0]
        spatial_res = image_size // cfg.spatial_latent_factor
        if spatial_res == 4:
            self.spatial_tap = -1
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(ResBlock(c_in, c_out, "up", norm=True, act=nn.SiLU(), upsample=cfg.upsample, class_embed_dim=norm_embed))
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
        self.prior = None
        if cfg.spatial_prior == "learned":
            if not cfg.spatial_latent_channels:
                raise ValueError("model.spatial_prior 'learned' needs model.spatial_latent_channels > 0")
            self.prior = SpatialPrior(cfg.latent_dim, embed_dim, self.spatial_shape, (cfg.logvar_min, cfg.logvar_max))

    def prior_stats(self, vector: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (B, C·R²) float32 of the learned prior p(z₂ | z₁, y) (``model.spatial_prior``)."""
        embedding = self.embed(labels) if self.embed is not None else None
        return self.prior(vector, embedding)

    def latent_from_noise(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """eps ~ N(0, I) (B, Z) → a draw of z from the model's prior: z itself under the standard
        prior; with the learned prior z₁ = eps₁ and z₂ = mu(z₁, y) + sigma(z₁, y)·eps₂."""
        if self.prior is None:
            return noise
        vector = noise[:, : self.vector_dim]
        mu, logvar = self.prior_stats(vector, labels)
        spatial = mu + (0.5 * logvar).exp() * noise[:, self.vector_dim :].float()
        return torch.cat([vector, spatial.to(vector.dtype)], dim=1)

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
            h = block(h, embedding) if isinstance(block, ResBlock) else block(h)
            if index == self.spatial_tap and spatial is not None:
                h = self._inject(h, spatial)
        return torch.tanh(self.out(h))


class Critic(nn.Module):
    """Wasserstein critic: (B, 1, S, S) [, labels (B,)] → raw score (B,). No sigmoid, no BatchNorm.

    Class conditioning by projection (Miyato & Koyama 2018): score = w·h + <embed(y), h>.
    ``spectral=True`` wraps every layer in spectral norm (for the hinge loss; not with WGAN-GP).
    ``forward(..., features=True)`` also returns the mid-level feature map used by the
    Larsen-style feature reconstruction loss.
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int = 0, spectral: bool = False):
        super().__init__()
        wrap = spectral_norm if spectral else (lambda m: m)
        chans = channel_plan(cfg, image_size)
        act = nn.LeakyReLU(0.2)
        self.stem = wrap(nn.Conv2d(1, chans[0], 3, padding=1))
        blocks: list[nn.Module] = []
        res = image_size
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks.append(ResBlock(c_in, c_out, "down", norm=False, act=act, sn=spectral))
            res //= 2
            if res in cfg.self_attention_res:
                blocks.append(SelfAttention(c_out, sn=spectral))
        self.blocks = nn.ModuleList(blocks)
        self.feature_index = max(0, len(blocks) // 2 - 1)
        self.act = act
        self.mbstd = MinibatchStd(cfg.critic_mbstd_group) if cfg.critic_mbstd_group > 1 else None
        self.final = wrap(nn.Conv2d(chans[-1] + (1 if self.mbstd else 0), chans[-1], 3, padding=1))
        self.linear = wrap(nn.Linear(chans[-1], 1))
        self.embed = wrap(nn.Embedding(n_classes, chans[-1])) if n_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, features: bool = False,
                set_sizes: tuple[int, ...] | None = None):
        """``set_sizes``: sizes of the consecutive sets that make up the batch (default: one set),
        so that one call can judge several sets with per-set minibatch statistics."""
        if set_sizes is not None and sum(set_sizes) != x.shape[0]:
            raise ValueError(f"set_sizes {set_sizes} do not add up to the batch size {x.shape[0]}")
        h = self.stem(x)
        mid = h
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index == self.feature_index:
                mid = h
        if self.mbstd is not None:
            h = self.mbstd(h, set_sizes)
        pooled = self.act(self.final(self.act(h))).sum(dim=(2, 3))  # (B, C)
        score = self.linear(pooled).squeeze(1)
        if self.embed is not None:
            score = score + (self.embed(labels) * pooled).sum(dim=1)
        return (score, mid) if features else score


class LatentClassifier(nn.Module):
    """The Fader adversary (Lample et al. 2017): reads the class from the posterior mean. The encoder
    is trained to leave it at chance, so z carries no grade and the decoder must take it from y.

    (B, Z) → (B, K) logits
    """

    def __init__(self, latent_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float())


def gaussian_blur_matrix(size: int, sigma: float) -> torch.Tensor:
    """(size, size) matrix G such that G @ X @ G.T is the (size, size) image X blurred by a Gaussian of
    ``sigma`` px with reflected borders: torchvision's ``gaussian_blur`` with its kernel of 2⌈3σ⌉ + 1
    taps, to float rounding. Why not that function: it is a one-channel 7×7 convolution, which
    oneDNN runs slowly on the CPU (its backward alone was 3 % of a training step); the blur is
    separable and the images are small, so two (S × S) matrix products do it for ~1/30 of the time."""
    radius = math.ceil(3 * sigma)
    if radius >= size:
        raise ValueError(f"a blur of sigma {sigma} px needs images larger than {radius} px, got {size}")
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    taps /= taps.sum()
    rows = torch.arange(size)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for weight, offset in zip(taps, range(-radius, radius + 1)):
        columns = (rows + offset).abs()  # reflect at 0 ...
        columns = torch.where(columns >= size, 2 * (size - 1) - columns, columns)  # ... and at size - 1
        matrix.index_put_((rows, columns), weight.expand(size), accumulate=True)
    return matrix.float()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, S, S) → the same, blurred by ``sigma`` px with reflected borders (0: unchanged)."""
    if sigma <= 0:
        return x
    matrix = gaussian_blur_matrix(x.shape[-1], sigma).to(x.device, x.dtype)
    return matrix @ x @ matrix.T


def fold_batch_norm(classifier: nn.Module) -> nn.Module:
    """An evaluation-mode copy of a ``SliceClassifier`` with each BatchNorm folded into the
    convolution before it (torch's ``fuse_conv_bn_eval``): the same function to float rounding,
    one pass over the activations less per layer. For frozen classifiers only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(classifier).eval()
    layers = list(folded.features)
    for index in range(len(layers) - 1):
        if isinstance(layers[index], nn.Conv2d) and isinstance(layers[index + 1], nn.BatchNorm2d):
            layers[index], layers[index + 1] = fuse_conv_bn_eval(layers[index], layers[index + 1]), nn.Identity()
    folded.features = nn.Sequential(*layers)
    return folded


def side_by_side(classifiers: list[nn.Module]) -> nn.Sequential:
    """One network computing the mean logits of M frozen ``SliceClassifier``s of one architecture
    (BatchNorm folded, evaluation mode): the first convolution's filters stacked, every later one
    grouped (groups = M), the heads as one linear layer over the concatenated pooled features.
    The same function to float rounding, but one call of M× wider layers instead of M calls of
    narrow ones, which oneDNN runs at a fraction of its speed on the CPU.

    (B, 1, S, S) → (B, K)
    """
    folded = [fold_batch_norm(c) for c in classifiers]
    count = len(folded)
    layers: list[nn.Module] = []
    for index, layer in enumerate(folded[0].features):
        if isinstance(layer, nn.Conv2d):
            convs = [c.features[index] for c in folded]
            groups = 1 if layer.in_channels == 1 else count
            merged = nn.Conv2d(layer.in_channels * (1 if groups == 1 else count), layer.out_channels * count, layer.kernel_size,
                               padding=layer.padding, groups=groups)
            merged.weight.data.copy_(torch.cat([c.weight for c in convs]))
            merged.bias.data.copy_(torch.cat([c.bias for c in convs]))
            layers.append(merged)
        elif not isinstance(layer, nn.Identity):
            layers.append(copy.deepcopy(layer))
    heads = [c.head[-1] if isinstance(c.head, nn.Sequential) else c.head for c in folded]  # dropout: identity when frozen
    head = nn.Linear(heads[0].in_features * count, heads[0].out_features)
    head.weight.data.copy_(torch.cat([h.weight for h in heads], dim=1) / count)
    head.bias.data.copy_(torch.stack([h.bias for h in heads]).mean(dim=0))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


class BlurredEnsemble(nn.Module):
    """Frozen grade judges for the consistency loss (ICAM's frozen classifier, Bass et al. 2020):
    classifiers trained on real slices blurred by ``sigma`` px, applied to images blurred the same
    way, logits averaged. The blur keeps them on coarse anatomy (ventricles, CSF), so their
    gradient moves anatomy rather than inventing pixel texture. Never trained here; the members
    run as one network (``side_by_side``).

    (B, 1, S, S) in [-1, 1] → (B, K) logits
    """

    def __init__(self, members: list[nn.Module], sigma: float):
        super().__init__()
        self.net = side_by_side(members).eval().requires_grad_(False)
        self.sigma = sigma

    def train(self, mode: bool = True) -> "BlurredEnsemble":
        return super().train(False)  # frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(gaussian_blur(x, self.sigma)).float()


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

    def prior_latent(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """eps ~ N(0, I) (B, Z) → z drawn from the model's prior (``Decoder.latent_from_noise``)."""
        return self.decoder.latent_from_noise(noise, self.labels(y))

    def sample(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode prior draws from noise eps ~ N(0, I) (B, Z) (the caller draws it, for seeding):
        z = eps under the standard prior, through the learned spatial prior otherwise."""
        return self.decode(self.prior_latent(noise, y), y)

    def eval(self) -> "VAE":
        self.encoder.eval()
        self.decoder.eval()
        return self


class VAEGAN(nn.Module):
    """The model: encoder, decoder (= generator) and critic, an EMA copy of encoder and decoder
    for sampling, (``classifier=True``, conditional only) the auxiliary classifier and
    (``latent_classifier=True``, conditional only) the Fader adversary on z.
    ``vae`` and ``ema_vae`` are the live and the EMA pair seen through the ``VAE`` API.

    ``n_classes`` is the number of classes the nets are conditioned on (0 = unconditional).
    """

    def __init__(self, cfg: ModelConfig, image_size: int, n_classes: int, spectral_critic: bool = False, classifier: bool = False,
                 latent_classifier: bool = False):
        super().__init__()
        self.n_classes = n_classes
        self.latent_dim = latent_size(cfg, image_size)
        self.encoder = Encoder(cfg, image_size, n_classes)
        self.decoder = Decoder(cfg, image_size, n_classes)
        self.critic = Critic(cfg, image_size, n_classes, spectral=spectral_critic)
        self.ema_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.ema_decoder = copy.deepcopy(self.decoder).requires_grad_(False)
        self.classifier = SliceClassifier(n_classes, cfg.classifier_width, norm="group") if classifier and n_classes else None
        self.latent_classifier = LatentClassifier(latent_size(cfg, image_size), n_classes) if latent_classifier and n_classes else None

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

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema ← decay · ema + (1 − decay) · live, for encoder and decoder."""
        for ema, live in ((self.ema_encoder, self.encoder), (self.ema_decoder, self.decoder)):
            torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1.0 - decay)
