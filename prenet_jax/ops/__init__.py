"""Geometry ops of the pipeline, public: per-frame, jit-able, vmap-able, differentiable.

Conventions: frames are ``(H, W)``; coordinates ``(row, col)``; pixel centres at
integers; the frame centre is ``((H-1)/2, (W-1)/2)``; samples outside the frame
read as 0. The ellipse convention is that of :class:`prenet_jax.Ellipse`.
"""

from ..conventions import axes_to_ratio_angle, ellipse_from_matrix, ellipse_matrix, normalize_angle, ratio_angle_to_axes
from ._centers import BEAM_CONTRAST, PLATEAU_PIXELS, com_center, direct_beam_found, friedel_center, heatmap_center, shift_between
from ._ellipse_estimate import EllipseEstimate, estimate_ellipse, harmonic_ellipse, ring_radii
from ._ellipse_fit import fit_ellipse_edge, polar_transform
from ._filters import gaussian_filter, gaussian_matrix
from ._masks import detect_bad_pixels, fill_masked, mirrored_valid, pixel_sums
from ._refine import (
    RefinedEllipse,
    azimuthal_variance,
    ellipse_of_params,
    ellipse_params,
    friedel_mismatch,
    matrix_of_params,
    refine_center,
    refine_ellipse,
)
from ._warp import (
    affine_warp,
    correct_ellipse,
    frame_center,
    recenter,
    recenter_and_correct,
    resize,
    resize_coordinates,
    sample,
    translate,
)

__all__ = [
    "BEAM_CONTRAST",
    "PLATEAU_PIXELS",
    "RefinedEllipse",
    "affine_warp",
    "azimuthal_variance",
    "axes_to_ratio_angle",
    "com_center",
    "correct_ellipse",
    "detect_bad_pixels",
    "direct_beam_found",
    "ellipse_from_matrix",
    "ellipse_matrix",
    "ellipse_of_params",
    "ellipse_params",
    "fill_masked",
    "fit_ellipse_edge",
    "estimate_ellipse",
    "EllipseEstimate",
    "harmonic_ellipse",
    "ring_radii",
    "frame_center",
    "friedel_center",
    "shift_between",
    "friedel_mismatch",
    "gaussian_filter",
    "gaussian_matrix",
    "heatmap_center",
    "matrix_of_params",
    "mirrored_valid",
    "normalize_angle",
    "pixel_sums",
    "polar_transform",
    "ratio_angle_to_axes",
    "recenter",
    "recenter_and_correct",
    "refine_center",
    "refine_ellipse",
    "resize",
    "resize_coordinates",
    "sample",
    "translate",
]

# The descan model (numpy, host-side: it fits a whole scan's centre map, not a frame).
from ._descan import Descan, descan_design, fit_descan

__all__ += ["Descan", "descan_design", "fit_descan"]
