"""Configuration of the pipeline: network sizes and the method of every stage."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .models import ResNetConfig, UNetConfig
from .stages import CENTER, DENOISE, ELLIPSE, STAGES, classical_methods

__all__ = ["PipelineConfig", "DENOISE_METHODS", "CENTER_METHODS", "ELLIPSE_METHODS"]

DENOISE_METHODS = DENOISE.methods
CENTER_METHODS = CENTER.methods
ELLIPSE_METHODS = ELLIPSE.methods


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes what :class:`prenet_jax.Pipeline` computes.

    Attributes
    ----------
    image_size : side of the square input of the (coarse) centre network, and of the
        ellipse network when ``ellipse_input="image"``; frames of another size are
        resampled for them and the results mapped back.
    denoiser, center_net, ellipse_net : network sizes.
    center_fine : the fine centre network, or None for one pass. With it the centre
        is found coarse to fine: ``center_net`` finds the direct disk anywhere in the
        frame resampled to ``image_size``, then ``center_fine`` finds the sub-pixel
        centre in a ``fine_size`` crop of the native frame around that estimate.
    fine_size : side (native px) of the fine pass's crop.
    denoise_residual : the denoiser predicts a correction to its input (in the
        transform space) instead of the clean frame: an untrained or unsure network
        returns its input, so denoising never starts from a blur.
    ellipse_input : what the ellipse network sees of the recentred mean pattern:
        ``"image"`` (resampled to ``image_size``) or ``"polar"`` (its polar transform,
        ``polar_angles`` x ``polar_radii``, with the azimuthal residual and the
        ``cos 2 phi`` / ``sin 2 phi`` coordinates as channels: an ellipse moves the
        rings radially by ``r (ratio - 1) / 2 cos 2(phi - theta)``).
    polar_angles, polar_radii : the polar grid: angles over 2 pi, radii 0 to
        ``polar_radii - 1`` native px, 1 px apart (the same scale on any frame size;
        128 reaches the edge of a 256 px frame).
    compute_dtype : ``"float32"`` or ``"bfloat16"`` (parameters stay float32; losses,
        centroids and warps always run in float32).
    denoise_method : ``"network"`` (CBAM U-Net), ``"gaussian"`` (Gaussian filter,
        see ``gaussian_sigma``), ``"scan"`` (each frame with its aligned scan neighbours,
        :meth:`prenet_jax.Pipeline.denoise_scan`: it needs the scan, so it runs before
        the per-batch step, which then leaves the frames as they are) or ``"none"``.
    center_method : ``"network"`` (heatmap U-Net + weighted centre of mass),
        ``"com"`` (thresholded centre of mass), ``"friedel"`` (autoconvolution) or
        ``"none"`` (no recentring).
    ellipse_method : ``"network"`` (ResNet), ``"fit"`` (edge fit of the mean
        pattern) or ``"none"``.
    center_refine : ``"friedel"`` refines every centre after its estimate, inside the
        same compiled step, by Friedel symmetry through the warp
        (:func:`prenet_jax.ops.refine_center`; a frame whose refinement fails keeps
        its estimate and is flagged ``FLAG_REFINE``), or ``"none"``.
    refine_window, refine_steps : the square of pixels (px) around the estimate that
        the refinement compares with its rotation, and its Gauss-Newton steps.
    center_consensus : with ``center_method="network"``, a classical estimate
        (``"com"`` or ``"friedel"``) computed in the same step that replaces the
        network's wherever the two agree within ``consensus_px``; ``"none"``: the
        network's alone. The classical methods are exact on clean, symmetric disks
        (0.025 px on the demo cube, where the release networks are 0.12 px off); the
        network finds the disk where they fail (cut-off and dynamical patterns, errors
        of pixels to tens of pixels). Measured in ``docs/training.md``.
    consensus_px : the agreement radius of ``center_consensus`` (native px).
    interpolation : ``"linear"`` or ``"cubic"`` resampling of the corrected frames.
    transform : intensity transform of the networks' input, after dividing each
        frame by its maximum: ``"sqrt"`` (variance-stabilising for Poisson counts,
        compresses the direct disk's dynamic range) or ``"linear"``.
    negative : what negative pixels (read noise, dark-subtracted data) do:
        ``"clip"`` (default, as the command line) treats them as zero counts and
        flags the frame (``FLAG_NEGATIVE``); ``"error"`` raises a ``ValueError``.
    gaussian_sigma : width (px) of the ``"gaussian"`` denoiser. None (default):
        chosen per frame from its dose and feature size, no filter where none helps
        (``prenet_jax/pipeline/_gaussian.py``: measured never to lower the PSNR from
        1e2 to 1e6 electrons per pattern); a number fixes it for every frame.
    calibration_frames : the most frames pass 0 samples across the scan for the ellipse.
    calibration_counts : the counts (electrons) pass 0 gathers: it samples
        ``calibration_counts / (counts per frame)`` frames, at least 256 and at most
        ``calibration_frames`` (:meth:`prenet_jax.Pipeline.calibration_size`; measured:
        the ellipse to 0.0005 in ratio and about 0.1 degrees from 1e7 counts). 0, or
        frames that are not counts (non-integer values): always ``calibration_frames``.
    batch_size : frames per compiled step (rounded up to a multiple of the devices).
    """

    image_size: int = 256
    denoiser: UNetConfig = UNetConfig(width=32, depth=4, cbam=True)
    center_net: UNetConfig = UNetConfig(width=32, depth=4, cbam=False)
    ellipse_net: ResNetConfig = ResNetConfig(width=64, stages=(3, 4, 6, 3))
    center_fine: UNetConfig | None = None
    fine_size: int = 64
    denoise_residual: bool = False
    ellipse_input: Literal["image", "polar"] = "image"
    polar_angles: int = 64
    polar_radii: int = 128
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    denoise_method: str = "network"
    center_method: str = "network"
    ellipse_method: str = "network"
    interpolation: Literal["linear", "cubic"] = "linear"
    transform: Literal["sqrt", "linear"] = "sqrt"
    negative: Literal["error", "clip"] = "clip"
    gaussian_sigma: float | None = None
    com_threshold: float = 0.5
    heatmap_threshold: float = 0.2
    heatmap_radius: float = 8.0
    calibration_frames: int = 4096
    calibration_counts: float = 1e7
    batch_size: int = 128
    center_refine: Literal["none", "friedel"] = "none"
    refine_window: int = 64
    refine_steps: int = 6
    center_consensus: Literal["none", "com", "friedel"] = "none"
    consensus_px: float = 1.0

    def __post_init__(self):
        # In this order, so that of several bad fields the first is named.
        self._check_methods()
        self._check_numerics()
        self._check_shapes()

    def _check_methods(self) -> None:
        """The stage methods and the centre refinement / consensus settings."""
        for stage in STAGES:
            if getattr(self, stage.method_field) not in stage.methods:
                raise ValueError(f"{stage.method_field}={getattr(self, stage.method_field)!r} is not one of {stage.methods}")
        if self.center_refine not in ("none", "friedel"):
            raise ValueError(f"center_refine={self.center_refine!r}: use 'friedel' or 'none'")
        if self.center_consensus not in ("none", "com", "friedel"):
            raise ValueError(f"center_consensus={self.center_consensus!r}: use 'com', 'friedel' or 'none'")
        if not self.consensus_px > 0:
            raise ValueError(f"consensus_px={self.consensus_px!r}: give the agreement radius in px (> 0)")
        if self.refine_window < 16 or self.refine_steps < 1:
            raise ValueError("refine_window must be at least 16 px and refine_steps at least 1")

    def _check_numerics(self) -> None:
        """Interpolation, transform, negative handling, the Gaussian width, dtype and pass-0 sizes."""
        if self.interpolation not in ("linear", "cubic"):
            raise ValueError(f"interpolation={self.interpolation!r}: use 'linear' or 'cubic'")
        if self.transform not in ("sqrt", "linear"):
            raise ValueError(f"transform={self.transform!r}: use 'sqrt' or 'linear'")
        if self.negative not in ("error", "clip"):
            raise ValueError(f"negative={self.negative!r}: use 'clip' or 'error'")
        if self.gaussian_sigma is not None and not (
            isinstance(self.gaussian_sigma, (int, float)) and 0 <= self.gaussian_sigma < float("inf")
        ):
            raise ValueError(f"gaussian_sigma={self.gaussian_sigma!r}: use None (chosen per frame from its counts) or a width in px >= 0")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype={self.compute_dtype!r}: use 'float32' or 'bfloat16'")
        if self.batch_size < 1 or self.calibration_frames < 1:
            raise ValueError("batch_size and calibration_frames must be positive")
        if not self.calibration_counts >= 0:
            raise ValueError(
                f"calibration_counts={self.calibration_counts!r}: give the counts pass 0 gathers (>= 0; 0: always calibration_frames)"
            )

    def _check_shapes(self) -> None:
        """The network input sizes against the networks' depths, and the ellipse input."""
        for name in ("denoiser", "center_net"):
            if self.image_size % 2 ** getattr(self, name).depth:
                raise ValueError(f"image_size={self.image_size} must be divisible by 2**{name}.depth")
        if self.center_fine is not None and self.fine_size % 2**self.center_fine.depth:
            raise ValueError(f"fine_size={self.fine_size} must be divisible by 2**center_fine.depth")
        if self.ellipse_input not in ("image", "polar"):
            raise ValueError(f"ellipse_input={self.ellipse_input!r}: use 'image' or 'polar'")
        if min(self.polar_angles, self.polar_radii, self.fine_size) < 8:
            raise ValueError("polar_angles, polar_radii and fine_size must be at least 8")

    @classmethod
    def tiny(cls, **overrides: Any) -> PipelineConfig:
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
    def release(cls, **overrides: Any) -> PipelineConfig:
        """The architecture of the bundled weights, sized to train on two CPU cores.

        - Denoiser: CBAM U-Net (width 16, depth 4), residual in the sqrt space,
          trained on 64 px crops and run at the native resolution.
        - Centre, coarse to fine: a heatmap U-Net (width 16, depth 3) on the frame
          resampled to 64 px finds the direct disk anywhere; a second one on a 64 px
          native crop around it gives the sub-pixel centre.
        - Ellipse: ResNet-50 blocks (width 16) on the polar transform of the
          recentred mean pattern (64 angles x 128 radii).

        ``docs/training.md`` gives the measurements behind each choice.
        """
        base = dict(
            image_size=64,
            denoiser=UNetConfig(width=16, depth=4, cbam=True, groups=8),
            center_net=UNetConfig(width=16, depth=3, cbam=False, groups=8),
            center_fine=UNetConfig(width=16, depth=3, cbam=False, groups=8),
            fine_size=64,
            denoise_residual=True,
            ellipse_net=ResNetConfig(width=16, stages=(3, 4, 6, 3)),
            ellipse_input="polar",
            polar_angles=64,
            polar_radii=128,
            transform="sqrt",
            interpolation="linear",
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper(cls, **overrides: Any) -> PipelineConfig:
        """The paper-size architecture for GPU training: 256 px inputs, one centre
        pass, U-Nets of width 32 and ResNet-50 of width 64 (the defaults)."""
        base = dict(image_size=256, transform="sqrt", interpolation="linear")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def classical(cls, **overrides: Any) -> PipelineConfig:
        """Classical methods at every stage: Gaussian filter, thresholded CoM, edge fit."""
        base = classical_methods()
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> PipelineConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        d = dict(d)
        d["denoiser"] = UNetConfig(**d["denoiser"])
        d["center_net"] = UNetConfig(**d["center_net"])
        if d.get("center_fine") is not None:
            d["center_fine"] = UNetConfig(**d["center_fine"])
        e = dict(d["ellipse_net"])
        e["stages"] = tuple(e["stages"])
        d["ellipse_net"] = ResNetConfig(**e)
        return cls(**d)
