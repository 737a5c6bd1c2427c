"""One module per training task: its batch, loss and metrics (LiberTEM's one file per
format; big_vision's one module per component).

``<stage name>.py`` for each stage of :data:`prenet_jax.stages.STAGES` (``denoise``,
``center``, ``ellipse``) and ``e2e.py`` for :data:`prenet_jax.stages.E2E_TASK`. Each
module has ``task_loss(cfg, pcfg, variables, extra, clean, zero, key, k_extra, train)
-> (loss, (metrics, extra))``, which the jitted steps call through :func:`task_module`:
a new task is a new module and a row of the stage table.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...stages import E2E_TASK, TASKS, stage_of
from .center import center_batch, center_loss, gaussian_heatmap
from .denoise import denoise_metrics, denoiser_batch, denoiser_loss, sample_crops
from .e2e import E2EBatch, e2e_batch, e2e_forward, e2e_loss
from .ellipse import ellipse_batch, ellipse_loss, ellipse_targets, matrix_from_output, residual_ratio

__all__ = [
    "E2EBatch",
    "center_batch",
    "center_loss",
    "denoise_metrics",
    "denoiser_batch",
    "denoiser_loss",
    "e2e_batch",
    "e2e_forward",
    "e2e_loss",
    "ellipse_batch",
    "ellipse_loss",
    "ellipse_targets",
    "gaussian_heatmap",
    "matrix_from_output",
    "residual_ratio",
    "sample_crops",
    "task_module",
]


def task_module(task: str) -> ModuleType:
    """The module of training ``task`` (one of :data:`prenet_jax.stages.TASKS`)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    name = E2E_TASK if task == E2E_TASK else stage_of(task).name
    return importlib.import_module(f"{__name__}.{name}")
