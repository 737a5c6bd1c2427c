"""Training configuration: one :class:`TrainConfig` per experiment (``train/configs/``).

A config file defines ``get_config(size)``; :func:`load_config` runs it
(``path:size``), :func:`override` changes any nested field (``--set a.b=value``). The
data, augmentation and loss settings are :class:`DataConfig`, :class:`AugmentConfig`
and :class:`LossConfig`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

import jax

from .._util import call_from_file
from ..config import PipelineConfig
from ..corruption import AugmentConfig
from ..stages import DENOISE, NETWORKS, TASKS, task_networks
from ._batches import DataConfig
from ._losses import LossConfig

__all__ = [
    "TASKS",
    "ALL_NETWORKS",
    "AugmentConfig",
    "DataConfig",
    "LossConfig",
    "TrainConfig",
    "task_networks",
    "cache_dir",
    "load_config",
    "override",
    "resolve_pipeline",
]

#: Every network a task may train or start from (``init_from``).
ALL_NETWORKS = NETWORKS


# Fields that may change when a run is resumed (they change no number of the run).
_RESUMABLE_CHANGES = {
    "name",
    "log_every",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "patience",
    "min_delta",
    "checkpoint_file_size",
    "init_from",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One experiment (big_vision style: one of these per file in ``train/configs/``).

    Attributes
    ----------
    name : the run's name (default work directory ``runs/<name>``).
    task : one of :data:`prenet_jax.stages.TASKS`: a stage's task (its networks) or
        ``"e2e"`` (every network through the whole pipeline).
    pipeline : network sizes, image size, transform, interpolation, heatmap settings:
        the :class:`PipelineConfig` the exported weights will run under.
    data, augment, loss : see :class:`DataConfig`, :class:`AugmentConfig`, :class:`LossConfig`.
    batch_size : frames per global batch (all devices of all processes); a multiple of the
        device count (e2e: of ``group_size`` x the device count).
    group_size : e2e only: frames sharing one ellipse (one recentred mean per group).
    steps : total optimiser steps (the cosine schedule ends there).
    lr, warmup_steps, end_lr_fraction : Adam with linear warm-up from 0 to ``lr`` over
        ``warmup_steps``, then cosine decay to ``lr * end_lr_fraction`` at ``steps``.
    weight_decay : decoupled (AdamW) when > 0.
    grad_clip : global-norm clipping of the gradient.
    compute_dtype : ``"auto"`` (bfloat16 on GPU/TPU, float32 on CPU), ``"float32"`` or
        ``"bfloat16"``; parameters, losses, centroids and warps stay float32.
    seed : initialisation, data order and augmentation.
    log_every, eval_every, eval_batches, eval_batch_size : training metrics every
        ``log_every`` steps; validation on ``eval_batches`` fixed batches (same patterns,
        same keys every time) every ``eval_every`` steps and at the end (0: none).
    checkpoint_every : steps between checkpoints (also written at the end and when the
        time limit stops a run).
    patience, min_delta : stop after ``patience`` validations without an improvement of
        ``best_metric`` by more than ``min_delta`` (None: never stop early).
    best_metric : the validation metric (lower is better) that picks the best step
        (what export takes) and drives early stopping; ``"loss"`` by default. The
        centre task uses ``"center_err"``: the error of the pipeline's own coarse-to-fine
        centre, which the loss (on training-style crops) only approximates.
    init_from : ``{network: path}`` start networks from a run directory or a weights
        directory (e2e: the three separately trained networks).
    trainable : e2e only: networks updated (the others stay fixed); None = all.
    center_input : center task: train on the ``"noisy"`` frames, the ``"clean"`` ones, or
        ``"mixed"`` (each frame noisy or clean by a coin flip: at inference the centre
        network sees the denoiser's output, which lies between the two).
    crop_size, crops_per_frame : denoiser task: the network trains on
        ``crops_per_frame`` crops of ``crop_size`` px of each augmented whole frame
        (None: whole frames). The global batch is ``batch_size`` frames.
    ellipse_center_error : ellipse task: px of Gaussian error of the centre used to
        recentre the averaged pattern (what the centre network leaves in pass 0).
    checkpoint_file_size : bytes per orbax data file (carrying checkpoints between
        machines limits files to 16 MiB; orbax overshoots the target by up to ~2x).
    """

    name: str = "run"
    task: str = DENOISE.task
    pipeline: PipelineConfig = dataclasses.field(default_factory=PipelineConfig.tiny)
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig(max_shift=3.0)
    loss: LossConfig = LossConfig()
    batch_size: int = 16
    group_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    end_lr_fraction: float = 0.01
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    eval_batch_size: int | None = None
    checkpoint_every: int = 500
    patience: int | None = None
    min_delta: float = 0.0
    best_metric: str = "loss"
    init_from: dict = dataclasses.field(default_factory=dict)
    trainable: tuple[str, ...] | None = None
    center_input: Literal["noisy", "clean", "mixed"] = "noisy"
    crop_size: int | None = None
    crops_per_frame: int = 1
    ellipse_center_error: float = 0.3
    checkpoint_file_size: int = 4 * 2**20

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"compute_dtype {self.compute_dtype!r}: use 'auto', 'float32' or 'bfloat16'")
        if self.batch_size < 1 or self.steps < 1 or self.group_size < 1:
            raise ValueError("batch_size, steps and group_size must be positive")
        if self.task == "e2e" and self.batch_size % self.group_size:
            raise ValueError(f"e2e: batch_size {self.batch_size} must be a multiple of group_size {self.group_size}")
        if self.center_input not in ("noisy", "clean", "mixed"):
            raise ValueError("center_input must be 'noisy', 'clean' or 'mixed'")
        if self.crop_size is not None and (self.crop_size < 8 or self.crop_size % 2**self.pipeline.denoiser.depth):
            raise ValueError(f"crop_size={self.crop_size} must be at least 8 and a multiple of 2**denoiser.depth")
        if self.crops_per_frame < 1:
            raise ValueError("crops_per_frame must be at least 1")
        bad = set(self.init_from) - set(ALL_NETWORKS)
        if bad:
            raise ValueError(f"init_from names unknown networks {sorted(bad)}; use {ALL_NETWORKS}")
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
            if not set(self.trainable) <= set(self.networks) or not self.trainable:
                raise ValueError(f"trainable {self.trainable} must be a non-empty subset of {self.networks}")

    @property
    def networks(self) -> tuple[str, ...]:
        """The networks this task runs (the fine centre network where the pipeline has one)."""
        return task_networks(self.task, self.pipeline)

    @property
    def trained(self) -> tuple[str, ...]:
        """The networks this task updates."""
        return self.trainable or self.networks

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        tup = lambda x: tuple(x) if isinstance(x, list) else x  # noqa: E731
        d["pipeline"] = PipelineConfig.from_dict(d["pipeline"])
        d["data"] = DataConfig(**{k: tup(v) for k, v in d["data"].items()})
        d["augment"] = AugmentConfig(**{k: tup(v) for k, v in d["augment"].items()})
        d["loss"] = LossConfig(**d["loss"])
        if d.get("trainable") is not None:
            d["trainable"] = tuple(d["trainable"])
        return cls(**d)


def cache_dir() -> Path:
    """Where data and checkpoints of long jobs live by default, outside any repository:
    ``$PRENET_JAX_CACHE``, else ``$XDG_CACHE_HOME/prenet-jax``, else ``~/.cache/prenet-jax``."""
    if os.environ.get("PRENET_JAX_CACHE"):
        return Path(os.environ["PRENET_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prenet-jax"


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Run ``get_config()`` of a Python config file (``train/configs/*.py``).

    ``path`` may end in ``:ARG`` (``train/configs/denoiser.py:release``): ``get_config(ARG)``
    is called, which picks one of the file's sizes (big_vision's config strings).
    """
    text = str(path)
    arg = None
    if ":" in Path(text).name:
        text, _, arg = text.rpartition(":")
    cfg = call_from_file(text, "get_config", *(() if arg is None else (arg,)), missing=" (a config is a Python file with get_config())")
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"{path}: get_config() must return a TrainConfig, got {type(cfg).__name__}")
    return cfg


def _parse_value(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string


def override(cfg: Any, dotted: str, value: Any) -> Any:
    """A copy of the (nested, frozen) dataclass ``cfg`` with ``a.b.c = value``.

    ``value`` may be a string, parsed as a Python literal (``--set lr=3e-4``,
    ``--set pipeline.denoiser.width=8``, ``--set augment.dose_range=(1e2,1e4)``).
    """
    head, _, rest = dotted.partition(".")
    if isinstance(cfg, dict):
        if not rest:
            return {**cfg, head: _parse_value(value) if isinstance(value, str) else value}
        return {**cfg, head: override(cfg[head], rest, value)}
    if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"unknown setting {dotted!r} in {type(cfg).__name__}")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, value)})
    if isinstance(value, str):
        value = _parse_value(value)
    return dataclasses.replace(cfg, **{head: value})


def resolve_pipeline(cfg: TrainConfig) -> PipelineConfig:
    """The pipeline configuration the step runs: the compute dtype made concrete and the
    trained networks' methods set to ``"network"``."""
    dt = cfg.compute_dtype
    if dt == "auto":
        dt = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    methods = {"denoise_method": "network", "center_method": "network", "ellipse_method": "network"}
    return cfg.pipeline.replace(compute_dtype=dt, **methods)
