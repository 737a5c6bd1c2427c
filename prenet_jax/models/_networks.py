"""The three networks of 4D-PreNet, in Flax Linen (pure functions of parameters).

* :class:`UNet` with ``cbam=True``: the denoiser (sigmoid output on normalised
  intensities).
* :class:`UNet` with ``cbam=False``: the centre network (sigmoid heatmap).
* :class:`ResNet`: ResNet-50 by default (bottleneck blocks ``[3, 4, 6, 3]``),
  regressing ``(cos 2 theta, sin 2 theta, ratio)`` from an averaged pattern.

Every model takes ``(B, H, W)`` or ``(B, H, W, 1)`` float input. ``dtype`` is the
compute dtype (bfloat16 on accelerators), parameters are always float32. The
U-Nets use GroupNorm, so a frame's output never depends on the rest of its
batch (a corrupted frame cannot spread through a batch); the ResNet keeps the
BatchNorm of the original architecture (running statistics at inference).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["UNetConfig", "ResNetConfig", "UNet", "ResNet", "CBAM", "count_params"]

Dtype = Any


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Width and depth of a U-Net.

    Attributes
    ----------
    width : channels at full resolution (doubled at every level below).
    depth : number of 2x down-samplings; the input side must be divisible by ``2**depth``.
    cbam : channel and spatial attention after every block (the denoiser).
    max_width : cap on the channel count of the deep levels.
    groups : GroupNorm groups (clipped to the channel count).
    """

    width: int = 32
    depth: int = 4
    cbam: bool = False
    max_width: int = 512
    groups: int = 8


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet with bottleneck blocks; ``stages=(3, 4, 6, 3)`` is ResNet-50."""

    width: int = 64
    stages: tuple[int, ...] = (3, 4, 6, 3)
    outputs: int = 3


class CBAM(nn.Module):
    """Convolutional block attention: channel attention, then spatial attention."""

    reduction: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        hidden = max(c // self.reduction, 1)
        mlp1 = nn.Dense(hidden, dtype=self.dtype, name="mlp1")
        mlp2 = nn.Dense(c, dtype=self.dtype, name="mlp2")
        avg = jnp.mean(x, axis=(1, 2))
        mx = jnp.max(x, axis=(1, 2))
        att = nn.sigmoid(mlp2(nn.relu(mlp1(avg))) + mlp2(nn.relu(mlp1(mx))))
        x = x * att[:, None, None, :]
        s = jnp.concatenate([jnp.mean(x, axis=-1, keepdims=True), jnp.max(x, axis=-1, keepdims=True)], -1)
        s = nn.sigmoid(nn.Conv(1, (7, 7), padding="SAME", dtype=self.dtype, name="spatial")(s))
        return x * s


class _ConvBlock(nn.Module):
    features: int
    groups: int
    cbam: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.GroupNorm(num_groups=min(self.groups, self.features), dtype=self.dtype, name=f"norm{i}")(x)
            x = nn.silu(x)
        if self.cbam:
            x = CBAM(dtype=self.dtype, name="cbam")(x)
        return x


class UNet(nn.Module):
    """U-Net mapping ``(B, H, W[, C])`` to ``(B, H, W)`` logits or sigmoid values."""

    config: UNetConfig
    sigmoid: bool = True
    dtype: Dtype = jnp.float32
    #: Zero-initialised head: the untrained network outputs 0 (logits) or 0.5
    #: (sigmoid). A residual denoiser adds this output to its input, so it starts as
    #: the identity and can only learn to move away from it where that helps.
    zero_head: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        if x.ndim == 3:
            x = x[..., None]
        h, w = x.shape[1:3]
        if h % 2**cfg.depth or w % 2**cfg.depth:
            raise ValueError(f"U-Net input {h}x{w} must be divisible by 2**depth = {2**cfg.depth}; pad it first")
        x = x.astype(self.dtype)
        feats = [min(cfg.width * 2**i, cfg.max_width) for i in range(cfg.depth + 1)]
        skips = []
        for i in range(cfg.depth):
            x = _ConvBlock(feats[i], cfg.groups, cfg.cbam, self.dtype, name=f"down{i}")(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = _ConvBlock(feats[-1], cfg.groups, cfg.cbam, self.dtype, name="bottom")(x)
        for i in reversed(range(cfg.depth)):
            x = nn.ConvTranspose(feats[i], (2, 2), (2, 2), dtype=self.dtype, name=f"up{i}")(x)
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = _ConvBlock(feats[i], cfg.groups, cfg.cbam, self.dtype, name=f"dec{i}")(x)
        # The head runs in float32: the output feeds losses, centroids and warps.
        head_init = nn.initializers.zeros if self.zero_head else nn.initializers.lecun_normal()
        y = nn.Conv(1, (1, 1), dtype=jnp.float32, kernel_init=head_init, name="head")(x.astype(jnp.float32))[..., 0]
        return nn.sigmoid(y) if self.sigmoid else y


class _Bottleneck(nn.Module):
    features: int
    strides: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name, **kw)
        # Symmetric padding k // 2, as in the reference ResNet (XLA's "SAME" pads
        # strided convolutions asymmetrically), so PyTorch ports match exactly.
        conv = lambda f, k, s, name: nn.Conv(
            f, k, (s, s), padding=[(k[0] // 2,) * 2, (k[1] // 2,) * 2], use_bias=False, dtype=self.dtype, name=name
        )
        y = nn.relu(norm("bn1")(conv(self.features, (1, 1), 1, "conv1")(x)))
        y = nn.relu(norm("bn2")(conv(self.features, (3, 3), self.strides, "conv2")(y)))
        # Zero-initialised last scale: each block starts as the identity (stable training).
        y = norm("bn3", scale_init=nn.initializers.zeros)(conv(4 * self.features, (1, 1), 1, "conv3")(y))
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            x = norm("bn_proj")(conv(4 * self.features, (1, 1), self.strides, "proj")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet regressor: ``(B, H, W[, C])`` -> ``(B, outputs)`` float32."""

    config: ResNetConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        cfg = self.config
        if x.ndim == 3:
            x = x[..., None]
        x = x.astype(self.dtype)
        x = nn.Conv(cfg.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, dtype=self.dtype, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        for i, n in enumerate(cfg.stages):
            for j in range(n):
                x = _Bottleneck(cfg.width * 2**i, 2 if (j == 0 and i > 0) else 1, self.dtype, name=f"stage{i}_block{j}")(x, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        out = nn.Dense(cfg.outputs, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="head")(x)
        # Output (cos 2t, sin 2t, ratio): the ratio head is an offset from 1, so an
        # untrained network predicts "no distortion".
        return out.at[:, 2].add(1.0) if cfg.outputs == 3 else out


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
