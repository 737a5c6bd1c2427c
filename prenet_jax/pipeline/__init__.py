"""The in-memory pipeline: normalise -> denoise -> centre -> one composed warp.

:class:`Pipeline` compiles the stages into one ``jax.jit`` step per batch of frames;
:func:`denoise_risk` estimates any denoiser's MSE from the noisy frames alone; the
weights it runs are read by :func:`load_pretrained` (bundled) or
:func:`load_weights` (exported by training).
"""

from ._pipeline import (
    FLAG_EMPTY,
    FLAG_NEGATIVE,
    FLAG_NONFINITE,
    FLAG_REFINE,
    Pipeline,
    PreprocessResult,
    as_counts,
    center_stage,
    denoise_stage,
    denormalize,
    ellipse_network_input,
    ellipse_stage,
    normalize,
    refine_stage,
    refine_targets,
    warp_stage,
)
from ._risk import RiskEstimate, denoise_risk, estimate_noise, gaussian_centre_weight
from ._validate import MIN_FRAME_SIDE, check_frames, host_dtype
from ._weights import WEIGHTS_DIR, load_pretrained, load_weights, save_weights

__all__ = [
    "as_counts",
    "center_stage",
    "denoise_risk",
    "denoise_stage",
    "denormalize",
    "ellipse_network_input",
    "ellipse_stage",
    "estimate_noise",
    "gaussian_centre_weight",
    "normalize",
    "refine_stage",
    "refine_targets",
    "warp_stage",
    "FLAG_EMPTY",
    "FLAG_NEGATIVE",
    "FLAG_NONFINITE",
    "FLAG_REFINE",
    "MIN_FRAME_SIDE",
    "Pipeline",
    "PreprocessResult",
    "RiskEstimate",
    "WEIGHTS_DIR",
    "check_frames",
    "host_dtype",
    "load_pretrained",
    "load_weights",
    "save_weights",
]
