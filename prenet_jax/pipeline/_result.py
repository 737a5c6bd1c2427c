"""What :meth:`prenet_jax.Pipeline.preprocess` returns."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..conventions import Ellipse
from ..ops import Descan

__all__ = ["PreprocessResult"]


@dataclasses.dataclass
class PreprocessResult:
    """Output of :meth:`Pipeline.preprocess`.

    Attributes
    ----------
    data : (Rx, Ry, H, W) float32, corrected frames in the input's intensity units
    centers : (Rx, Ry, 2) float64, beam centre ``(row, col)`` found in each input frame
    ellipse : the distortion that was undone
    flags : (Rx, Ry) uint8 bit mask (``FLAG_NONFINITE``, ``FLAG_EMPTY``, ``FLAG_NEGATIVE``,
        ``FLAG_REFINE``, ``FLAG_DESCAN``)
    mean_pattern : (H, W) float32 recentred mean of the calibration frames (pass 0),
        or None when the ellipse was given
    refinement : with ``refine=True``: the ellipse before and after its refinement and
        the azimuthal variance of the corrected mean before and after
        (:class:`prenet_jax.ops.RefinedEllipse`), and how many centre refinements failed
    scan_denoised : with ``denoise_method="scan"``: the
        :class:`prenet_jax.pipeline.ScanDenoised` record (each frame's window, blur,
        estimated risk; its ``frames`` are the denoised input before recentring)
    descan : with ``descan=``: the :class:`prenet_jax.ops.Descan` fit; ``centers`` are then
        its chosen centres (the measured ones are ``descan.model + descan.residuals``);
        its ``outliers`` are flagged ``FLAG_DESCAN``
    """

    data: np.ndarray
    centers: np.ndarray
    ellipse: Ellipse
    flags: np.ndarray
    mean_pattern: np.ndarray | None = None
    refinement: dict | None = None
    descan: Descan | None = None
    scan_denoised: object = None
