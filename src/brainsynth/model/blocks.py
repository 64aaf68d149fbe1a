"""Building blocks of the VAE-GAN's networks: attention (CBAM, SAGAN self-attention), the
pre-activation residual block that changes resolution, ProGAN's minibatch standard deviation and
the channel plan from S down to 4×4.

Shapes: B = batch, C = channels, H, W = height and width. Every block keeps its input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.value_channels = max(channels // 2, 1)
        self.query = nn.Conv2d(channels, inner, 1, bias=False)
        self.key = nn.Conv2d(channels, inner, 1, bias=False)
        self.value = nn.Conv2d(channels, self.value_channels, 1, bias=False)
        self.out = nn.Conv2d(self.value_channels, channels, 1, bias=False)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        key = F.max_pool2d(self.key(x), 2).flatten(2)  # (B, C/8, HW/4)
        value = F.max_pool2d(self.value(x), 2).flatten(2)  # (B, C/2, HW/4)
        attention = torch.softmax(query @ key, dim=-1)  # (B, HW, HW/4)
        attended = (value @ attention.transpose(1, 2)).view(b, self.value_channels, h, w)
        return x + self.gate * self.out(attended)


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


class ResBlock(nn.Module):
    """Pre-activation residual block that changes resolution; GroupNorm when ``norm``.

    'down': (B, C_in, H, W) → (B, C_out, H/2, W/2); 'up': (B, C_in, H, W) → (B, C_out, 2H, 2W).
    One of the two 3×3 convolutions runs at the lower resolution, which quarters its cost
    compared with the BigGAN layout and matters on CPU, where these blocks are the whole budget.
    """

    def __init__(self, c_in: int, c_out: int, resample: str, norm: bool, act: nn.Module, upsample: str = "nearest"):
        super().__init__()
        if resample not in ("down", "up"):
            raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
        self.resample, self.upsample = resample, upsample
        mid = c_in if resample == "down" else c_out
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in) if norm else nn.Identity()
        self.norm2 = nn.GroupNorm(_groups(mid), mid) if norm else nn.Identity()
        self.conv1 = nn.Conv2d(c_in, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            h = downsample2x(self.conv1(self.act(self.norm1(x))))  # conv at H, then pool
            h = self.conv2(self.act(self.norm2(h)))  # conv at H/2
            return h + self.skip(downsample2x(x))
        h = self._up(self.conv1(self.act(self.norm1(x))))  # conv at H
        h = self.conv2(self.act(self.norm2(h)))  # conv at 2H
        return h + self._up(self.skip(x))

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == "bilinear":
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def channel_plan(cfg: ModelConfig, image_size: int) -> list[int]:
    """Channels at each resolution from S down to 4: [c(S), c(S/2), ..., c(4)]."""
    depth = int(math.log2(image_size // 4))
    return [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(depth + 1)]
