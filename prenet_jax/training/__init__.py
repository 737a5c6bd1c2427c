"""Training: augment -> batches -> losses -> jitted steps -> loop and checkpoints -> export.

One :class:`TrainConfig` per experiment (``train/configs/``), with its
:class:`DataConfig`, :class:`AugmentConfig` and :class:`LossConfig`; :func:`train`
runs or resumes it, :func:`export` writes the inference weights.
"""

from ._augment import AugmentConfig, augment
from ._batches import DataConfig, load_split
from ._losses import LossConfig
from ._recipe import Recipe, load_recipe, run_recipe
from ._train import (
    TASKS,
    TrainConfig,
    cache_dir,
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
    "Recipe",
    "TrainConfig",
    "augment",
    "cache_dir",
    "evaluate_e2e",
    "export",
    "is_finished",
    "load_config",
    "load_recipe",
    "load_run_variables",
    "load_split",
    "override",
    "plot_curves",
    "resolve_pipeline",
    "run_recipe",
    "train",
]
