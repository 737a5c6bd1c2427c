"""PyTorch reference of prenet-jax's networks and pipeline step, with a weight converter.

The paper's code was never released, so this is the PyTorch a user would write for
the same architecture: the CBAM U-Net denoiser, the heatmap U-Net with a weighted
centre of mass, the ResNet-50 ellipse regressor, and the recentring + ellipse
warp as one ``grid_sample`` (channels_last and bf16 autocast are the caller's
choice, see ``benchmarks/throughput.py``). :func:`load_flax` copies prenet-jax
(Flax) variables into these modules so the two can be compared number for number.

Nothing here is installed with the package: torch is a benchmark-only dependency.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import prenet_jax as pj

__all__ = ["UNet", "ResNet", "TorchPipeline", "load_flax", "heatmap_center", "recenter_and_correct"]


class CBAM(nn.Module):
    def __init__(self, c: int, reduction: int = 16):
        super().__init__()
        hidden = max(c // reduction, 1)
        self.mlp1 = nn.Linear(c, hidden)
        self.mlp2 = nn.Linear(hidden, c)
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        avg = x.mean(dim=(2, 3))
        mx = x.amax(dim=(2, 3))
        att = torch.sigmoid(self.mlp2(F.relu(self.mlp1(avg))) + self.mlp2(F.relu(self.mlp1(mx))))
        x = x * att[:, :, None, None]
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(s))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, f: int, groups: int, cbam: bool):
        super().__init__()
        self.conv0 = nn.Conv2d(cin, f, 3, padding=1, bias=False)
        self.norm0 = nn.GroupNorm(min(groups, f), f, eps=1e-6)  # Flax's GroupNorm epsilon
        self.conv1 = nn.Conv2d(f, f, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(groups, f), f, eps=1e-6)
        self.cbam = CBAM(f) if cbam else None

    def forward(self, x):
        x = F.silu(self.norm0(self.conv0(x)))
        x = F.silu(self.norm1(self.conv1(x)))
        return self.cbam(x) if self.cbam is not None else x


class UNet(nn.Module):
    """``(B, 1, H, W)`` -> ``(B, H, W)``; mirrors :class:`prenet_jax.UNet`."""

    def __init__(self, cfg: pj.UNetConfig, sigmoid: bool = True):
        super().__init__()
        feats = [min(cfg.width * 2**i, cfg.max_width) for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList([ConvBlock(1 if i == 0 else feats[i - 1], feats[i], cfg.groups, cfg.cbam) for i in range(cfg.depth)])
        self.bottom = ConvBlock(feats[-2], feats[-1], cfg.groups, cfg.cbam)
        self.up = nn.ModuleList([nn.ConvTranspose2d(feats[i + 1], feats[i], 2, stride=2) for i in range(cfg.depth)])
        self.dec = nn.ModuleList([ConvBlock(2 * feats[i], feats[i], cfg.groups, cfg.cbam) for i in range(cfg.depth)])
        self.head = nn.Conv2d(feats[0], 1, 1)
        self.sigmoid = sigmoid
        self.depth = cfg.depth

    def forward(self, x):
        skips = []
        for blk in self.down:
            x = blk(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for i in reversed(range(self.depth)):
            x = torch.cat([self.up[i](x), skips[i]], dim=1)
            x = self.dec[i](x)
        y = self.head(x.float())[:, 0]
        return torch.sigmoid(y) if self.sigmoid else y


class Bottleneck(nn.Module):
    def __init__(self, cin: int, f: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, f, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(f)
        self.conv2 = nn.Conv2d(f, f, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f)
        self.conv3 = nn.Conv2d(f, 4 * f, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * f)
        self.proj = None
        if cin != 4 * f or stride != 1:
            self.proj = nn.Sequential(nn.Conv2d(cin, 4 * f, 1, stride=stride, bias=False), nn.BatchNorm2d(4 * f))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu((self.proj(x) if self.proj is not None else x) + y)


class ResNet(nn.Module):
    """``(B, 1, H, W)`` -> ``(B, 3)`` = (cos 2t, sin 2t, ratio); mirrors :class:`prenet_jax.ResNet`."""

    def __init__(self, cfg: pj.ResNetConfig):
        super().__init__()
        self.stem = nn.Conv2d(1, cfg.width, 7, stride=2, padding=3, bias=False)
        self.stem_bn = nn.BatchNorm2d(cfg.width)
        blocks, cin = [], cfg.width
        self.names = []
        for i, n in enumerate(cfg.stages):
            for j in range(n):
                blocks.append(Bottleneck(cin, cfg.width * 2**i, 2 if (j == 0 and i > 0) else 1))
                cin = 4 * cfg.width * 2**i
                self.names.append(f"stage{i}_block{j}")
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, cfg.outputs)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 3, 2, 1)
        for b in self.blocks:
            x = b(x)
        out = self.head(x.float().mean(dim=(2, 3)))
        return out + torch.tensor([0.0, 0.0, 1.0], device=out.device)


# ---------------------------------------------------------------- weight conversion


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.array(a, np.float32))  # a writable copy


def _conv(m: nn.Conv2d, p: dict) -> None:
    m.weight.data.copy_(_t(np.transpose(p["kernel"], (3, 2, 0, 1))))  # HWIO -> OIHW
    if m.bias is not None:
        m.bias.data.copy_(_t(p["bias"]))


def _conv_transpose(m: nn.ConvTranspose2d, p: dict) -> None:
    # Flax's ConvTranspose does not flip its kernel; PyTorch's (the gradient of a
    # convolution) does: flip the spatial axes. (kh, kw, in, out) -> (in, out, kh, kw)
    m.weight.data.copy_(_t(np.transpose(np.asarray(p["kernel"])[::-1, ::-1], (2, 3, 0, 1))))
    m.bias.data.copy_(_t(p["bias"]))


def _dense(m: nn.Linear, p: dict) -> None:
    m.weight.data.copy_(_t(np.asarray(p["kernel"]).T))
    m.bias.data.copy_(_t(p["bias"]))


def _norm(m, p: dict, stats: dict | None = None) -> None:
    m.weight.data.copy_(_t(p["scale"]))
    m.bias.data.copy_(_t(p["bias"]))
    if stats is not None:
        m.running_mean.data.copy_(_t(stats["mean"]))
        m.running_var.data.copy_(_t(stats["var"]))


def _block(m: ConvBlock, p: dict) -> None:
    for i in range(2):
        _conv(getattr(m, f"conv{i}"), p[f"conv{i}"])
        _norm(getattr(m, f"norm{i}"), p[f"norm{i}"])
    if m.cbam is not None:
        _dense(m.cbam.mlp1, p["cbam"]["mlp1"])
        _dense(m.cbam.mlp2, p["cbam"]["mlp2"])
        _conv(m.cbam.spatial, p["cbam"]["spatial"])


def load_flax(module: nn.Module, variables: dict) -> nn.Module:
    """Copy Flax variables (``{"params": ..., ["batch_stats": ...]}``) into ``module``."""
    p = variables["params"]
    if isinstance(module, UNet):
        for i in range(module.depth):
            _block(module.down[i], p[f"down{i}"])
            _block(module.dec[i], p[f"dec{i}"])
            _conv_transpose(module.up[i], p[f"up{i}"])
        _block(module.bottom, p["bottom"])
        _conv(module.head, p["head"])
    elif isinstance(module, ResNet):
        s = variables["batch_stats"]
        _conv(module.stem, p["stem"])
        _norm(module.stem_bn, p["stem_bn"], s["stem_bn"])
        for name, b in zip(module.names, module.blocks):
            for k in ("1", "2", "3"):
                _conv(getattr(b, f"conv{k}"), p[name][f"conv{k}"])
                _norm(getattr(b, f"bn{k}"), p[name][f"bn{k}"], s[name][f"bn{k}"])
            if b.proj is not None:
                _conv(b.proj[0], p[name]["proj"])
                _norm(b.proj[1], p[name]["bn_proj"], s[name]["bn_proj"])
        _dense(module.head, p["head"])
    else:
        raise TypeError(f"no converter for {type(module).__name__}")
    return module


# ---------------------------------------------------------------- geometry and the step


def heatmap_center(heat: torch.Tensor, threshold: float = 0.2, radius: float = 8.0) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, 2)`` (row, col): the robust weighted centre of mass of prenet-jax."""
    b, h, w = heat.shape
    flat = heat.reshape(b, -1)
    idx = flat.argmax(dim=1)
    pr, pc = (idx // w).float(), (idx % w).float()
    rows = torch.arange(h, device=heat.device, dtype=torch.float32)
    cols = torch.arange(w, device=heat.device, dtype=torch.float32)
    inside = (rows[None, :, None] - pr[:, None, None]) ** 2 + (cols[None, None, :] - pc[:, None, None]) ** 2 <= radius**2
    floor = torch.clamp(flat.amin(dim=1), max=0.0)[:, None, None]
    peak = flat.amax(dim=1)[:, None, None]
    wts = torch.where(inside, F.relu(heat - floor - threshold * (peak - floor)) ** 2, torch.zeros_like(heat))
    tot = wts.sum(dim=(1, 2)).clamp_min(1e-30)
    return torch.stack([(wts.sum(2) * rows).sum(1) / tot, (wts.sum(1) * cols).sum(1) / tot], dim=1)


def recenter_and_correct(x: torch.Tensor, centers: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """One bilinear ``grid_sample`` per frame: read ``x`` at ``center + D (q - c0)``."""
    b, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=torch.float32) - (h - 1) / 2
    cols = torch.arange(w, device=x.device, dtype=torch.float32) - (w - 1) / 2
    qr, qc = torch.meshgrid(rows, cols, indexing="ij")
    pr = centers[:, 0, None, None] + matrix[0, 0] * qr + matrix[0, 1] * qc
    pc = centers[:, 1, None, None] + matrix[1, 0] * qr + matrix[1, 1] * qc
    grid = torch.stack([pc / (w - 1) * 2 - 1, pr / (h - 1) * 2 - 1], dim=-1)  # (x, y), align_corners
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, 0]


class TorchPipeline(nn.Module):
    """The fused per-batch step of :class:`prenet_jax.Pipeline` (network methods, frames of
    ``image_size``): normalise -> denoise -> heatmap -> weighted CoM -> composed warp."""

    def __init__(self, cfg: pj.PipelineConfig):
        super().__init__()
        self.cfg = cfg
        self.denoiser = UNet(cfg.denoiser, sigmoid=True)
        self.center_net = UNet(cfg.center_net, sigmoid=True)

    @classmethod
    def from_pipeline(cls, pipe: pj.Pipeline) -> TorchPipeline:
        import jax

        tp = cls(pipe.config)
        params = jax.device_get(pipe.params)
        load_flax(tp.denoiser, params["denoiser"])
        load_flax(tp.center_net, params["center_net"])
        return tp.eval()

    @staticmethod
    def _normalize(x):
        scale = x.amax(dim=(1, 2), keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.sqrt(x / scale), scale

    def forward(self, frames: torch.Tensor, matrix: torch.Tensor):
        x = torch.nan_to_num(frames.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
        xn, scale = self._normalize(x)
        y = self.denoiser(xn[:, None].to(memory_format=torch.channels_last)).float()
        x = y * y * scale
        xn, _ = self._normalize(x)
        heat = self.center_net(xn[:, None].to(memory_format=torch.channels_last)).float()
        centers = heatmap_center(heat, self.cfg.heatmap_threshold, self.cfg.heatmap_radius)
        return recenter_and_correct(x, centers, matrix), centers
