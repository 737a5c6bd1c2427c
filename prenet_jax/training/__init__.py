"""Training: augment -> batches -> losses -> jitted steps -> loop and checkpoints -> export.

One :class:`TrainConfig` per experiment (``train/configs/``), with its
:class:`DataConfig`, :class:`AugmentConfig` and :class:`LossConfig`; :func:`train`
runs or resumes it, :func:`export` writes the inference weights.
"""

from ..corruption import augment, distort, poisson
from ._batches import load_split
from ._checkpoints import load_run_variables
from ._export import evaluate_e2e, export
from ._loop import is_finished, plot_curves, train
from .config import (
    TASKS,
    AugmentConfig,
    DataConfig,
    LossConfig,
    TrainConfig,
    cache_dir,
    load_config,
    override,
    resolve_pipeline,
    task_networks,
)
from .tasks import denoise_metrics

__all__ = [
    "TASKS",
    "AugmentConfig",
    "DataConfig",
    "LossConfig",
    "TrainConfig",
    "augment",
    "denoise_metrics",
    "distort",
    "poisson",
    "cache_dir",
    "evaluate_e2e",
    "export",
    "is_finished",
    "load_config",
    "load_run_variables",
    "load_split",
    "override",
    "plot_curves",
    "resolve_pipeline",
    "task_networks",
    "train",
]
