"""Training: augment -> batches -> losses -> jitted steps -> loop and checkpoints -> export.

One :class:`TrainConfig` per experiment (``train/configs/``), with its
:class:`DataConfig`, :class:`AugmentConfig` and :class:`LossConfig`; :func:`train`
runs or resumes it, :func:`export` writes the inference weights.
"""

from ._augment import AugmentConfig, augment
from ._batches import DataConfig, load_split
from ._losses import LossConfig
from ._train import (
    TASKS,
    TrainConfig,
    evaluate_e2e,
    export,
    is_finished,
    load_config,
    load_run_variables,
    override,
    plot_curves,
    resolve_pipeline,
    train,
)

__all__ = [
    "TASKS",
    "AugmentConfig",
    "DataConfig",
    "LossConfig",
    "TrainConfig",
    "augment",
    "evaluate_e2e",
    "export",
    "is_finished",
    "load_config",
    "load_run_variables",
    "load_split",
    "override",
    "plot_curves",
    "resolve_pipeline",
    "train",
]
