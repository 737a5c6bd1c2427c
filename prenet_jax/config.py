"""Configuration of the pipeline: network sizes and the method of every stage."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .models._networks import ResNetConfig, UNetConfig

__all__ = ["PipelineConfig", "DENOISE_METHODS", "CENTER_METHODS", "ELLIPSE_METHODS"]

DENOISE_METHODS = ("network", "gaussian", "none")
CENTER_METHODS = ("network", "com", "friedel", "none")
ELLIPSE_METHODS = ("network", "fit", "none")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes what :class:`prenet_jax.Pipeline` computes.

    Attributes
    ----------
    image_size : side of the square input of the centre and ellipse networks; frames
        of another size are resampled for them and the results mapped back.
    denoiser, center_net, ellipse_net : network sizes.
    compute_dtype : ``"float32"`` or ``"bfloat16"`` (parameters stay float32; losses,
        centroids and warps always run in float32).
    denoise_method : ``"network"`` (CBAM U-Net), ``"gaussian"`` (filter of
        ``gaussian_sigma`` px) or ``"none"``.
    center_method : ``"network"`` (heatmap U-Net + weighted centre of mass),
        ``"com"`` (thresholded centre of mass), ``"friedel"`` (autoconvolution) or
        ``"none"`` (no recentring).
    ellipse_method : ``"network"`` (ResNet), ``"fit"`` (edge fit of the mean
        pattern) or ``"none"``.
    interpolation : ``"linear"`` or ``"cubic"`` resampling of the corrected frames.
    transform : intensity transform of the networks' input, after dividing each
        frame by its maximum: ``"sqrt"`` (variance-stabilising for Poisson counts,
        compresses the direct disk's dynamic range) or ``"linear"``.
    negative : what negative pixels (dark-subtracted data) do: ``"error"`` raises a
        ``ValueError``; ``"clip"`` treats them as zero counts.
    calibration_frames : frames sampled across the scan for the ellipse (pass 0).
    batch_size : frames per compiled step (rounded up to a multiple of the devices).
    """

    image_size: int = 256
    denoiser: UNetConfig = UNetConfig(width=32, depth=4, cbam=True)
    center_net: UNetConfig = UNetConfig(width=32, depth=4, cbam=False)
    ellipse_net: ResNetConfig = ResNetConfig(width=64, stages=(3, 4, 6, 3))
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    denoise_method: str = "network"
    center_method: str = "network"
    ellipse_method: str = "network"
    interpolation: Literal["linear", "cubic"] = "linear"
    transform: Literal["sqrt", "linear"] = "sqrt"
    negative: Literal["error", "clip"] = "error"
    gaussian_sigma: float = 1.0
    com_threshold: float = 0.5
    heatmap_threshold: float = 0.2
    heatmap_radius: float = 8.0
    calibration_frames: int = 4096
    batch_size: int = 128

    def __post_init__(self):
        for name, allowed in (("denoise_method", DENOISE_METHODS), ("center_method", CENTER_METHODS), ("ellipse_method", ELLIPSE_METHODS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation={self.interpolation!r}: use 'linear' or 'cubic'")
        if self.transform not in ("sqrt", "linear"):
            raise ValueError(f"transform={self.transform!r}: use 'sqrt' or 'linear'")
        if self.negative not in ("error", "clip"):
            raise ValueError(f"negative={self.negative!r}: use 'error' or 'clip'")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype={self.compute_dtype!r}: use 'float32' or 'bfloat16'")
        if self.batch_size < 1 or self.calibration_frames < 1:
            raise ValueError("batch_size and calibration_frames must be positive")
        for name in ("denoiser", "center_net"):
            if self.image_size % 2 ** getattr(self, name).depth:
                raise ValueError(f"image_size={self.image_size} must be divisible by 2**{name}.depth")

    @classmethod
    def tiny(cls, **overrides: Any) -> "PipelineConfig":
        """A configuration small enough for CPU tests (32 px networks, a few thousand weights)."""
        base = dict(
            image_size=32,
            denoiser=UNetConfig(width=4, depth=2, cbam=True, groups=2),
            center_net=UNetConfig(width=4, depth=2, groups=2),
            ellipse_net=ResNetConfig(width=4, stages=(1, 1, 1, 1)),
            batch_size=8,
            calibration_frames=64,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def release(cls, **overrides: Any) -> "PipelineConfig":
        """The architecture of the release weights (``train/configs/*_release.py``).

        Widths 16 (U-Nets depth 4, ResNet-50 blocks): a whole training state of one
        network fits what one GPU session can carry to the next (docs/training.md).
        """
        base = dict(
            image_size=256,
            denoiser=UNetConfig(width=16, depth=4, cbam=True, groups=8),
            center_net=UNetConfig(width=16, depth=4, cbam=False, groups=8),
            ellipse_net=ResNetConfig(width=16, stages=(3, 4, 6, 3)),
            transform="sqrt",
            interpolation="linear",
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def classical(cls, **overrides: Any) -> "PipelineConfig":
        """Classical methods at every stage: Gaussian filter, thresholded CoM, edge fit."""
        base = dict(denoise_method="gaussian", center_method="com", ellipse_method="fit")
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        d = dict(d)
        d["denoiser"] = UNetConfig(**d["denoiser"])
        d["center_net"] = UNetConfig(**d["center_net"])
        e = dict(d["ellipse_net"])
        e["stages"] = tuple(e["stages"])
        d["ellipse_net"] = ResNetConfig(**e)
        return cls(**d)
