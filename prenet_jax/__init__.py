"""prenet-jax: 4D-PreNet preprocessing of 4D-STEM data in JAX/Flax.

Denoising (CBAM U-Net), beam-centre recentring (heatmap U-Net + weighted centre
of mass) and elliptical-distortion correction (ResNet-50), compiled into one jit
program over batches of frames. See the README for the conventions.
"""

from . import ops
from .config import PipelineConfig
from .conventions import Ellipse
from .models import ResNet, ResNetConfig, UNet, UNetConfig
from .pipeline import FLAG_EMPTY, FLAG_NONFINITE, Pipeline, PreprocessResult
from .data import disk_pattern, synthetic_cube

__version__ = "0.1.0"

__all__ = [
    "Ellipse",
    "FLAG_EMPTY",
    "FLAG_NONFINITE",
    "Pipeline",
    "PipelineConfig",
    "PreprocessResult",
    "ResNet",
    "ResNetConfig",
    "UNet",
    "UNetConfig",
    "disk_pattern",
    "ops",
    "synthetic_cube",
    "__version__",
]
