"""The in-memory pipeline: normalise -> denoise -> centre -> one composed warp.

:class:`Pipeline` compiles the stages into one ``jax.jit`` step per batch of frames;
:func:`denoise_risk` estimates any denoiser's MSE from the noisy frames alone;
:func:`scan_gaussian` denoises a scan with each frame's aligned scan neighbours
(``denoise_method="scan"``, :meth:`Pipeline.denoise_scan`); the
weights it runs are read by :func:`load_pretrained` (bundled) or
:func:`load_weights` (exported by training). The stage functions (``*_stage``,
:func:`normalize`, :func:`crop_frames`, ...) and the classical denoiser's per-frame
width (:func:`frame_sigma`, :data:`SIGMA_GRID`) are public for training and the file
path, which run the same stages outside the ``Pipeline`` class.
"""

from ._gaussian import SIGMA_GRID, dose_adaptive_gaussian, frame_sigma, gaussian_per_frame, grid_risks, rule_gaussian
from ._pipeline import FLAG_EMPTY, FLAG_NEGATIVE, FLAG_NONFINITE, FLAG_REFINE, THINNING_FRAMES, Pipeline, scan_input
from ._result import PreprocessResult
from ._risk import RiskEstimate, denoise_risk, estimate_noise, gaussian_centre_weight
from ._scan import SCAN_RADIUS, SCAN_WIDTHS, ScanDenoised, ScanDenoiser, noise_check, scan_centers, scan_gaussian, scan_template
from ._stages import (
    as_counts,
    center_fine_stage,
    center_stage,
    crop_frames,
    crop_origin,
    denoise_normalized,
    denoise_stage,
    denormalize,
    ellipse_network_input,
    ellipse_stage,
    frame_counts,
    init_network_params,
    network_dtype,
    normalize,
    refine_stage,
    refine_targets,
    warp_stage,
)
from ._validate import MIN_FRAME_SIDE, check_frames, host_dtype
from ._weights import WEIGHTS_DIR, load_pretrained, load_weights, save_weights

__all__ = [
    "as_counts",
    "center_fine_stage",
    "center_stage",
    "crop_frames",
    "crop_origin",
    "denoise_normalized",
    "denoise_risk",
    "denoise_stage",
    "denormalize",
    "dose_adaptive_gaussian",
    "ellipse_network_input",
    "ellipse_stage",
    "estimate_noise",
    "frame_counts",
    "frame_sigma",
    "gaussian_centre_weight",
    "gaussian_per_frame",
    "grid_risks",
    "init_network_params",
    "network_dtype",
    "noise_check",
    "normalize",
    "refine_stage",
    "refine_targets",
    "rule_gaussian",
    "scan_centers",
    "scan_gaussian",
    "scan_input",
    "scan_template",
    "warp_stage",
    "FLAG_EMPTY",
    "FLAG_NEGATIVE",
    "FLAG_NONFINITE",
    "FLAG_REFINE",
    "MIN_FRAME_SIDE",
    "Pipeline",
    "PreprocessResult",
    "RiskEstimate",
    "SCAN_RADIUS",
    "SCAN_WIDTHS",
    "ScanDenoised",
    "ScanDenoiser",
    "SIGMA_GRID",
    "THINNING_FRAMES",
    "WEIGHTS_DIR",
    "check_frames",
    "host_dtype",
    "load_pretrained",
    "load_weights",
    "save_weights",
]
