"""prenet-jax: 4D-PreNet preprocessing of 4D-STEM data in JAX/Flax.

Denoising (CBAM U-Net), beam-centre recentring (heatmap U-Net + weighted centre
of mass) and elliptical-distortion correction (ResNet-50), compiled into one jit
program over batches of frames. See the README for the conventions.

The public names below are imported on first use (PEP 562): ``import prenet_jax``
and ``import prenet_jax.cli`` do not import jax, so that the ``prenet-jax`` command
handles SIGINT and SIGTERM from its first moment, not after seconds of imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    "Ellipse": ".conventions",
    "FLAG_EMPTY": ".pipeline",
    "FLAG_NONFINITE": ".pipeline",
    "Pipeline": ".pipeline",
    "PipelineConfig": ".config",
    "PreprocessResult": ".pipeline",
    "ResNet": ".models",
    "ResNetConfig": ".models",
    "RiskEstimate": ".pipeline",
    "UNet": ".models",
    "UNetConfig": ".models",
    "denoise_risk": ".pipeline",
    "disk_pattern": ".data",
    "synthetic_cube": ".data",
}

__all__ = [
    "FLAG_EMPTY",
    "FLAG_NONFINITE",
    "Ellipse",
    "Pipeline",
    "PipelineConfig",
    "PreprocessResult",
    "ResNet",
    "ResNetConfig",
    "RiskEstimate",
    "UNet",
    "UNetConfig",
    "__version__",
    "denoise_risk",
    "disk_pattern",
    "ops",
    "synthetic_cube",
]
assert set(__all__) == {*_WHERE, "ops", "__version__"}  # one list to keep: the two agree


def __getattr__(name: str):
    if name == "ops":
        return importlib.import_module(".ops", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from . import ops
    from .config import PipelineConfig
    from .conventions import Ellipse
    from .data import disk_pattern, synthetic_cube
    from .models import ResNet, ResNetConfig, UNet, UNetConfig
    from .pipeline import FLAG_EMPTY, FLAG_NONFINITE, Pipeline, PreprocessResult, RiskEstimate, denoise_risk
