"""What every training config shares, by size (flax's ``configs/default.py``): each task's
file (``denoiser.py``, ``center.py``, ``ellipse.py``, ``e2e.py``) starts from
:func:`base` and states only the fields that differ.

``tiny``
    CI: 32 px synthetic disk patterns, a 400-step schedule, early stopping.
``release``
    The bundled weights: the abTEM release simulation (:func:`simulated`), trained on two
    CPU cores by the release recipe; cosine decay to 2 % of the rate.
``paper``
    The paper's scale for a GPU: the 256 px ``PipelineConfig.paper`` networks, bfloat16
    where the device has it.

Not a config itself (it has no ``get_config``): a task's file reads it with
``runpy.run_path`` (config files are loaded by path, not as a package).
"""

import dataclasses

from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig, TrainConfig, cache_dir

SIZES = ("tiny", "release", "paper")

_SHARED = {
    "tiny": dict(
        pipeline=PipelineConfig.tiny(),
        data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4),
        batch_size=16,
        steps=400,
        lr=3e-3,
        warmup_steps=40,
        log_every=20,
        eval_every=100,
        eval_batches=4,
        checkpoint_every=200,
        patience=4,
    ),
    "release": dict(
        pipeline=PipelineConfig.release(),
        lr=2e-3,
        warmup_steps=100,
        end_lr_fraction=0.02,
        log_every=50,
        eval_every=250,
        eval_batches=8,
        checkpoint_every=250,
    ),
    "paper": dict(
        pipeline=PipelineConfig.paper(),
        batch_size=32,
        lr=1e-3,
        warmup_steps=500,
        compute_dtype="auto",
        log_every=100,
        eval_every=1000,
        eval_batches=16,
        checkpoint_every=1000,
    ),
}


def simulated(**changes) -> DataConfig:
    """The release simulation's patterns (``<cache>/release/sim``), with ``changes``."""
    return DataConfig(source="simulated", root=str(cache_dir() / "release" / "sim"), dataset="patterns", **changes)


def base(task: str, size: str, **changes) -> TrainConfig:
    """The ``size`` schedule of ``task``, named ``<task>_<size>``, with ``changes``."""
    if size not in _SHARED:
        raise ValueError(f"unknown size {size!r}: use {', '.join(SIZES)}")
    cfg = TrainConfig(name=f"{task}_{size}", task=task, seed=0, **_SHARED[size])
    return dataclasses.replace(cfg, **changes)
