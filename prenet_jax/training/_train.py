"""Training: one config per experiment, one jitted step per task, orbax checkpoints.

Tasks
-----
``"denoiser"``, ``"center"``, ``"ellipse"``: each network alone on its own loss
(:mod:`prenet_jax.training._losses`); ``"e2e"``: the whole chain, gradients from the corrected
frames and the centres through the composed warp into all three networks.

The step
--------
``state -> state`` with ``state = {"step", "params", "extra", "opt_state"}`` (plain
dicts of arrays: ``params`` the trained ``"params"`` collections, ``extra`` the rest:
BatchNorm statistics and frozen networks). One ``jax.jit`` per task with explicit
shardings: the clean batch is split over a 1-D ``"data"`` mesh of every device of every
process, the state is replicated, and the state is donated. The augmentation runs inside
the step from the key ``fold_in(fold_in(key(seed), 0), step)``, and the host picks the
clean patterns by :func:`prenet_jax.training._batches.batch_indices` of ``(seed, step)``: a resumed
run repeats an uninterrupted one exactly.

Files of a run (``workdir``)
----------------------------
``config.json`` (the experiment), ``metrics.jsonl`` (one JSON object per log line:
``{"step", "split": "train"|"val", ...}``), ``curves.png``, ``summary.json``,
``checkpoints/<step>/`` (orbax: the whole state, for resuming; the latest only),
``best/<step>/`` (orbax: the variables with the best validation loss, for export).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._augment import AugmentConfig
from ..config import PipelineConfig
from ._batches import DataConfig, batch_indices, cached_rotation_average, center_batch, denoiser_batch, e2e_batch, ellipse_batch, load_split
from ._losses import LossConfig, center_loss, denoiser_loss, e2e_loss, ellipse_loss
from ..models._networks import count_params
from ..pipeline._pipeline import _init_params

__all__ = [
    "TASKS",
    "TrainConfig",
    "cache_dir",
    "task_networks",
    "load_config",
    "override",
    "resolve_pipeline",
    "make_mesh",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "make_grad_fn",
    "split_variables",
    "evaluate_e2e",
    "train",
    "load_run_variables",
    "export",
    "evaluate",
    "plot_curves",
    "add_train_parser",
]

TASKS = ("denoiser", "center", "ellipse", "e2e")
ALL_NETWORKS = ("denoiser", "center_net", "center_fine", "ellipse_net")


def task_networks(task: str, pipeline: PipelineConfig) -> tuple[str, ...]:
    """The networks a task trains: its own, plus the fine centre network where the
    pipeline finds centres coarse to fine."""
    nets = {"denoiser": ("denoiser",), "center": ("center_net", "center_fine"), "ellipse": ("ellipse_net",),
            "e2e": ("denoiser", "center_net", "center_fine", "ellipse_net")}[task]
    return tuple(n for n in nets if n != "center_fine" or pipeline.center_fine is not None)


# Fields that may change when a run is resumed (they change no number of the run).
_RESUMABLE_CHANGES = {"name", "log_every", "eval_every", "eval_batches", "checkpoint_every", "patience", "min_delta",
                      "checkpoint_file_size", "init_from"}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One experiment (big_vision style: one of these per file in ``train/configs/``).

    Attributes
    ----------
    name : the run's name (default work directory ``runs/<name>``).
    task : ``"denoiser"``, ``"center"``, ``"ellipse"`` or ``"e2e"``.
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
    task: Literal["denoiser", "center", "ellipse", "e2e"] = "denoiser"
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

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
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
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    spec = importlib.util.spec_from_file_location(f"_prenet_train_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    cfg = mod.get_config(arg) if arg is not None else mod.get_config()
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


# ----------------------------------------------------------------------------- state and steps


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``"data"`` mesh over ``devices`` (default: every device of every process)."""
    devs = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devs), ("data",))


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clipped Adam(W) with linear warm-up and cosine decay."""
    warm = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, max(cfg.steps, warm + 1), cfg.lr * cfg.end_lr_fraction)
    opt = optax.adamw(sched, weight_decay=cfg.weight_decay) if cfg.weight_decay > 0 else optax.adam(sched)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt), sched


def _merge(params: dict, extra: dict) -> dict:
    """Flax variables per network from the trained ``params`` and the ``extra`` collections."""
    out = {k: dict(v) for k, v in extra.items()}
    for k, v in params.items():
        out.setdefault(k, {})["params"] = v
    return out


def _fresh_variables(cfg: TrainConfig, key: jax.Array) -> dict:
    # The non-partitionable threefry: the parameters are replicated anyway, and the
    # partitionable one takes XLA:CPU ~10x longer to compile (20 s for a tiny U-Net's init).
    with jax.threefry_partitionable(False):
        variables = _init_params(key, resolve_pipeline(cfg).replace(compute_dtype="float32"))
    return {k: variables[k] for k in cfg.networks}


def split_variables(cfg: TrainConfig, variables: dict) -> tuple[dict, dict]:
    """Flax variables per network -> ``(params, extra)``: the trained ``"params"``
    collections, and everything else (BatchNorm statistics, frozen networks)."""
    params = {k: variables[k]["params"] for k in cfg.trained}
    extra = {}
    for k in cfg.networks:
        rest = {c: v for c, v in variables[k].items() if c != "params" or k not in cfg.trained}
        if rest:
            extra[k] = rest
    return params, extra


def init_state(cfg: TrainConfig, key: jax.Array, tx: optax.GradientTransformation, variables: dict | None = None) -> dict:
    """A fresh training state (pure; jit it with an output sharding)."""
    if variables is None:
        variables = _fresh_variables(cfg, key)
    params, extra = split_variables(cfg, variables)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": extra, "opt_state": tx.init(params)}


def _task_loss(cfg: TrainConfig, pcfg: PipelineConfig, params, extra, clean, zero, key, train: bool):
    """``(loss, (metrics, new_extra))`` of one batch of clean patterns."""
    variables = _merge(params, extra)
    k_extra = jax.random.fold_in(key, 1)  # crops, fine-crop offsets: apart from the augmentation's key
    if cfg.task == "denoiser":
        noisy, target = denoiser_batch(key, clean, zero, cfg.augment)
        loss, m = denoiser_loss(pcfg, cfg.loss, variables["denoiser"], noisy, target, k_extra, cfg.crop_size, cfg.crops_per_frame)
        return loss, (m, extra)
    if cfg.task == "center":
        frames, centers = center_batch(key, clean, zero, cfg.augment, use_clean=cfg.center_input)
        nets = {k: variables[k] for k in cfg.networks}
        loss, m = center_loss(pcfg, cfg.loss, nets, frames, centers, k_extra, full=not train)
        return loss, (m, extra)
    if cfg.task == "ellipse":
        inputs, ratio, angle = ellipse_batch(key, clean, zero, cfg.augment, pcfg, cfg.ellipse_center_error)
        loss, (m, stats) = ellipse_loss(pcfg, cfg.loss, variables["ellipse_net"], inputs, ratio, angle, train=train)
        if train:
            extra = {**extra, "ellipse_net": {**extra["ellipse_net"], "batch_stats": stats}}
        return loss, (m, extra)
    batch = e2e_batch(key, clean, zero, cfg.augment, cfg.group_size)
    loss, m = e2e_loss(pcfg, cfg.loss, variables, batch)
    return loss, (m, extra)


def _train_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), step)


def _eval_key(seed: int, i: int | jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), i)


def make_train_step(cfg: TrainConfig, tx: optax.GradientTransformation, sched: optax.Schedule, mesh: Mesh,
                    pcfg: PipelineConfig | None = None) -> Callable:
    """``step(state, clean, zero) -> (state, metrics)``, jitted, state donated.

    ``clean (B', H, W)`` and ``zero (B', 2)`` are sharded over ``"data"`` (``B'`` = the
    batch size, or the number of groups for e2e); the state and metrics are replicated.
    """
    pcfg = pcfg or resolve_pipeline(cfg)

    def step(state, clean, zero):
        key = _train_key(cfg.seed, state["step"])
        grad_fn = jax.value_and_grad(lambda p: _task_loss(cfg, pcfg, p, state["extra"], clean, zero, key, True), has_aux=True)
        (_, (metrics, extra)), grads = grad_fn(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "lr": sched(state["step"]),
                   **{f"grad_norm_{k}": optax.global_norm(v) for k, v in grads.items()}}
        return {"step": state["step"] + 1, "params": params, "extra": extra, "opt_state": opt_state}, metrics

    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(repl, data, data), out_shardings=(repl, repl), donate_argnums=(0,))


def make_eval_step(cfg: TrainConfig, mesh: Mesh, pcfg: PipelineConfig | None = None) -> Callable:
    """``eval(params, extra, clean, zero, key) -> metrics`` (BatchNorm in inference mode)."""
    pcfg = pcfg or resolve_pipeline(cfg)

    def ev(params, extra, clean, zero, key):
        return _task_loss(cfg, pcfg, params, extra, clean, zero, key, False)[1][0]

    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(ev, in_shardings=(repl, repl, data, data, repl), out_shardings=repl)


def make_grad_fn(cfg: TrainConfig, pcfg: PipelineConfig | None = None) -> Callable:
    """``grads(params, extra, clean, zero, key) -> (loss, metrics, grads)`` (for inspection and tests)."""
    pcfg = pcfg or resolve_pipeline(cfg)

    @jax.jit
    def fn(params, extra, clean, zero, key):
        (loss, (m, _)), g = jax.value_and_grad(lambda p: _task_loss(cfg, pcfg, p, extra, clean, zero, key, True), has_aux=True)(params)
        return loss, m, g

    return fn


# ----------------------------------------------------------------------------- data on the host


class _Data:
    """The clean patterns of one split and the global -> process-local batch slicing."""

    def __init__(self, cfg: TrainConfig, split: str, mesh: Mesh):
        s = load_split(cfg.data, split)
        clean, zero = s.clean, s.zero_angle
        if cfg.task == "ellipse" and cfg.data.rotation_average > 1:
            clean = cached_rotation_average(cfg.data, split, clean, zero)
        self.clean, self.zero, self.structures = clean, zero, s.structure
        self.n = clean.shape[0]
        self.sharding = NamedSharding(mesh, P("data"))
        self.per_item = cfg.group_size if cfg.task == "e2e" else 1
        n_dev = mesh.devices.size
        if (cfg.batch_size // self.per_item) % n_dev:
            what = "batch_size / group_size" if cfg.task == "e2e" else "batch_size"
            raise ValueError(f"{what} = {cfg.batch_size // self.per_item} is not a multiple of the {n_dev} devices")

    def _put(self, idx: np.ndarray) -> tuple[jax.Array, jax.Array]:
        # Each process reads only its own slice of the global batch.
        npr, pid = jax.process_count(), jax.process_index()
        per = len(idx) // npr
        mine = idx[pid * per : (pid + 1) * per]
        make = jax.make_array_from_process_local_data
        return make(self.sharding, self.clean[mine]), make(self.sharding, self.zero[mine])

    def train_batch(self, seed: int, step: int, batch: int):
        return self._put(batch_indices(seed, step, self.n, batch // self.per_item))

    def eval_batch(self, i: int, batch: int):
        b = batch // self.per_item
        return self._put(np.arange(i * b, (i + 1) * b) % self.n)


def _put_replicated(tree, mesh: Mesh):
    """Host arrays (the same on every process) -> replicated global arrays."""
    repl = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, repl, lambda idx: x[idx])

    return jax.tree.map(put, tree)


# ----------------------------------------------------------------------------- checkpoints


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


class _Checkpoints:
    """An orbax CheckpointManager of ``{"state": pytree, "meta": json}`` items."""

    def __init__(self, directory: Path, keep: int = 1, file_size: int | None = None, read_only: bool = False):
        ocp = _ocp()
        self.file_size = file_size
        opts = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep, create=not read_only)
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.mgr = ocp.CheckpointManager(directory.absolute(), options=opts, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.mgr.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        ocp = _ocp()
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state, ocdbt_target_data_file_size=self.file_size), meta=ocp.args.JsonSave(meta))
        self.mgr.save(step, args=args, force=True)

    def restore(self, step: int | None = None, target=None) -> tuple[Any, dict]:
        """Restore onto the shardings of ``target`` (a tree of ``jax.ShapeDtypeStruct``), or
        as numpy arrays when ``target`` is None (works whatever devices saved it)."""
        ocp = _ocp()
        step = self.mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.mgr.directory}")
        if target is None:
            meta_tree = self.mgr.item_metadata(step)["state"]
            tree = meta_tree.tree if hasattr(meta_tree, "tree") else meta_tree
            rargs = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            state_args = ocp.args.PyTreeRestore(restore_args=rargs)
        else:
            state_args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
        out = self.mgr.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.close()


def _abstract(tree, mesh: Mesh):
    """Shapes and dtypes of ``tree`` with replicated shardings on ``mesh`` (the restore target)."""
    repl = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), tree)


def _run_config(workdir: Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((workdir / "config.json").read_text()))


def load_run_variables(path: str | os.PathLike, which: Literal["best", "last"] = "best") -> tuple[TrainConfig, dict, dict]:
    """``(config, variables, meta)`` of a run directory, as numpy arrays (any machine).

    ``variables`` maps every network of the run to its Flax variables
    (``{"params": ..., "batch_stats": ...}``); ``which="best"`` takes the best validation
    step (falls back to the last checkpoint when no validation ran).
    """
    wd = Path(path)
    cfg = _run_config(wd)
    if which == "best" and (wd / "best").is_dir():
        ck = _Checkpoints(wd / "best", read_only=True)
        if ck.latest_step() is not None:
            tree, meta = ck.restore()
            ck.close()
            return cfg, _merge(tree["params"], tree["extra"]), meta
        ck.close()
    ck = _Checkpoints(wd / "checkpoints", read_only=True)
    state, meta = ck.restore()
    ck.close()
    return cfg, _merge(state["params"], state["extra"]), meta


def _load_init(path: str, network: str) -> dict:
    """The variables of ``network`` from a run directory or a weights directory."""
    p = Path(path)
    if (p / "weights.npz").is_file():
        from ..pipeline._weights import load_weights

        _, params, _ = load_weights(p)
    elif (p / "config.json").is_file():
        _, params, _ = load_run_variables(p)
    else:
        raise FileNotFoundError(f"init_from {network}={path}: neither a run directory (config.json) nor weights (weights.npz)")
    if network not in params:
        raise ValueError(f"init_from {network}={path}: that run or weights file holds no {network} (has {sorted(params)})")
    return params[network]


def _check_same_tree(network: str, got, want) -> None:
    g = jax.tree_util.tree_structure(jax.tree.map(lambda x: 0, got))
    w = jax.tree_util.tree_structure(jax.tree.map(lambda x: 0, want))
    shapes_g = [np.shape(x) for x in jax.tree.leaves(got)]
    shapes_w = [tuple(x.shape) for x in jax.tree.leaves(want)]
    if g != w or shapes_g != shapes_w:
        raise ValueError(f"init_from {network}: the stored network does not match this config's {network} size "
                         "(width, depth, stages); use the same pipeline sizes as the run that trained it")


# ----------------------------------------------------------------------------- the loop


class _Log:
    """JSON lines, written by process 0 only."""

    def __init__(self, path: Path, primary: bool, resume_step: int | None):
        self.path, self.primary = path, primary
        if primary and path.exists() and resume_step is not None:
            # Drop what an interrupted run logged after its last checkpoint.
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(k + "\n" for k in keep))
        elif primary and resume_step is None:
            path.write_text("")

    def write(self, rec: dict) -> None:
        if self.primary:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def _mean_metrics(ms: list[dict]) -> dict:
    host = jax.device_get(ms)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            return {"git_commit": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": None, "git_dirty": None}


def _versions() -> dict:
    import flax
    import orbax.checkpoint as ocp

    from .. import __version__

    return {"prenet_jax": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "orbax_checkpoint": ocp.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()][:1] + [f"x{jax.device_count()}"]}


def evaluate(eval_fn: Callable, state: dict, data: _Data, cfg: TrainConfig) -> dict:
    """Mean metrics over ``cfg.eval_batches`` fixed validation batches."""
    b = cfg.eval_batch_size or cfg.batch_size
    ms = []
    for i in range(cfg.eval_batches):
        clean, zero = data.eval_batch(i, b)
        ms.append(eval_fn(state["params"], state["extra"], clean, zero, _eval_key(cfg.seed, i)))
    return _mean_metrics(ms)


def train(cfg: TrainConfig, workdir: str | os.PathLike, *, stop_at: int | None = None, time_limit: float | None = None,
          devices=None, log: Callable[[str], None] | None = print) -> dict:
    """Train (or resume) the experiment ``cfg`` in ``workdir``.

    Parameters
    ----------
    cfg : the experiment
    workdir : the run directory; a checkpoint found there is resumed (the config must
        match, see ``_RESUMABLE_CHANGES``)
    stop_at : checkpoint and return once this step is reached (chunked training)
    time_limit : seconds; checkpoint and return before this much wall time has passed
        (leave a margin for start-up and the final write)
    devices : devices of the data mesh (default: all)
    log : progress lines (None: silent)

    Returns
    -------
    The summary (also ``workdir/summary.json``): ``status`` ("finished", "early_stopped",
    "paused"), ``step``, ``best_step``, ``best_val``, last ``train`` and ``val`` metrics.
    """
    t_start = time.monotonic()
    say = (lambda s: log(s)) if (log and jax.process_index() == 0) else (lambda s: None)
    wd = Path(workdir)
    primary = jax.process_index() == 0
    pcfg = resolve_pipeline(cfg)
    mesh = make_mesh(devices)
    tx, sched = make_optimizer(cfg)
    if primary:
        wd.mkdir(parents=True, exist_ok=True)
    ckpts = _Checkpoints(wd / "checkpoints", keep=1, file_size=cfg.checkpoint_file_size)
    best_ckpt = _Checkpoints(wd / "best", keep=1, file_size=cfg.checkpoint_file_size)
    resume = ckpts.latest_step()

    if resume is not None and (wd / "config.json").exists():
        old = json.loads((wd / "config.json").read_text())
        new = cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES)
        if diff:
            raise ValueError(f"{wd} holds a run with other settings ({', '.join(diff)}): resume it with the same config, "
                             "or choose another --workdir")
    if primary:
        (wd / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    train_data = _Data(cfg, "train", mesh)
    val_data = _Data(cfg, "val", mesh)
    say(f"[{cfg.name}] task {cfg.task}: {train_data.n} train / {val_data.n} val patterns, "
        f"{jax.device_count()} device(s) ({jax.process_count()} process(es)), compute {pcfg.compute_dtype}")

    repl = NamedSharding(mesh, P())
    key = jax.random.key(cfg.seed)
    abstract = jax.eval_shape(lambda: init_state(cfg, key, tx))
    if resume is not None:
        state, meta = ckpts.restore(resume, _abstract(abstract, mesh))
        say(f"[{cfg.name}] resumed at step {resume}")
    else:
        variables = None
        if cfg.init_from:
            fresh = jax.eval_shape(lambda: _fresh_variables(cfg, key))
            host = jax.device_get(jax.jit(lambda: _fresh_variables(cfg, key))())
            for net, path in cfg.init_from.items():
                if net in cfg.networks:
                    host[net] = _load_init(path, net)
                    _check_same_tree(net, host[net], fresh[net])
            variables = _put_replicated(host, mesh)
            state = jax.jit(lambda v: init_state(cfg, key, tx, v), out_shardings=repl)(variables)
        else:
            state = jax.jit(lambda: init_state(cfg, key, tx), out_shardings=repl)()
        meta = {"best_val": None, "best_step": None, "bad_evals": 0, "elapsed_s": 0.0}
    n_params = {k: count_params(v) for k, v in state["params"].items()}
    say(f"[{cfg.name}] trained parameters: {n_params}")

    step_fn = make_train_step(cfg, tx, sched, mesh, pcfg)
    eval_fn = make_eval_step(cfg, mesh, pcfg)
    logf = _Log(wd / "metrics.jsonl", primary, resume)
    start = int(resume or 0)
    end = cfg.steps if stop_at is None else min(cfg.steps, int(stop_at))
    if meta.get("stopped_early"):
        end = start
    prior = float(meta.get("elapsed_s", 0.0))
    window: list = []
    t_win, n_win, first_window = time.monotonic(), 0, True
    step_time: float | None = None  # seconds per step, measured after the compilation
    last_train: dict = {}
    last_val: dict = {}
    step = start

    def save(step_now: int) -> None:
        meta["elapsed_s"] = prior + time.monotonic() - t_start
        ckpts.save(step_now, state, meta)

    while step < end:
        if time_limit is not None and step_time is not None:
            if time.monotonic() - t_start + 5 * step_time + 15.0 > time_limit:
                say(f"[{cfg.name}] time limit: pausing at step {step}")
                break
        clean, zero = train_data.train_batch(cfg.seed, step, cfg.batch_size)
        state, m = step_fn(state, clean, zero)
        step += 1
        window.append(m)
        n_win += 1
        if step % cfg.log_every == 0 or step == end:
            last_train = _mean_metrics(window)  # waits for the step: the timing is real
            dt = time.monotonic() - t_win
            rec = {"step": step, "split": "train", **last_train, "steps_per_s": n_win / dt,
                   "samples_per_s": n_win * cfg.batch_size / dt}
            if first_window:
                rec["includes_compile"] = True
            else:
                step_time = dt / n_win
            logf.write(rec)
            window, t_win, n_win, first_window = [], time.monotonic(), 0, False
        if cfg.eval_batches > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            last_val = evaluate(eval_fn, state, val_data, cfg)
            logf.write({"step": step, "split": "val", **last_val})
            say(f"[{cfg.name}] step {step}: train loss {last_train.get('loss', float('nan')):.5g}; val "
                + ", ".join(f"{k} {v:.4g}" for k, v in last_val.items()))
            best = meta["best_val"]
            if best is None or last_val[cfg.best_metric] < best - cfg.min_delta:
                meta.update(best_val=last_val[cfg.best_metric], best_step=step, bad_evals=0, best_metrics=last_val)
                best_ckpt.save(step, {"params": state["params"], "extra": state["extra"]}, {"step": step, "val": last_val})
            else:
                meta["bad_evals"] = int(meta["bad_evals"]) + 1
            if cfg.patience is not None and meta["bad_evals"] >= cfg.patience:
                meta["stopped_early"] = True
                say(f"[{cfg.name}] early stop at step {step}: no improvement in {cfg.patience} validations "
                    f"(best {meta['best_val']:.5g} at step {meta['best_step']})")
                break
            t_win = time.monotonic()  # evaluation stays out of the throughput
        if step % cfg.checkpoint_every == 0 and step < end:
            save(step)
    status = "early_stopped" if meta.get("stopped_early") else ("finished" if step >= cfg.steps else "paused")
    if step != start or resume is None:
        save(step)
    ckpts.wait()
    best_ckpt.wait()
    ckpts.close()
    best_ckpt.close()
    old_summary = json.loads((wd / "summary.json").read_text()) if (wd / "summary.json").exists() else {}
    summary = {"name": cfg.name, "task": cfg.task, "status": status, "step": step, "steps": cfg.steps,
               "best_step": meta.get("best_step"), "best_val": meta.get("best_val"), "best_metrics": meta.get("best_metrics"),
               # A call with nothing left to do keeps the last metrics it finds.
               "train": last_train or old_summary.get("train", {}), "val": last_val or old_summary.get("val", {}),
               "elapsed_s": prior + time.monotonic() - t_start,
               "trained_params": n_params, "devices": jax.device_count(), "processes": jax.process_count(),
               "compute_dtype": pcfg.compute_dtype}
    if primary:
        (wd / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            plot_curves(wd)
        except Exception as err:  # a plot must never lose a run
            say(f"[{cfg.name}] no plot: {err}")
    say(f"[{cfg.name}] {status} at step {step} ({summary['elapsed_s']:.1f} s)")
    return summary


def is_finished(workdir: str | os.PathLike) -> bool:
    """True when the run in ``workdir`` finished or stopped early (chunked scripts poll this)."""
    p = Path(workdir) / "summary.json"
    return p.exists() and json.loads(p.read_text())["status"] in ("finished", "early_stopped")


# ----------------------------------------------------------------------------- plots


def plot_curves(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """``curves.png``: training and validation loss, the task metric, and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = Path(workdir)
    recs = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    tr = [r for r in recs if r["split"] == "train"]
    va = [r for r in recs if r["split"] == "val"]
    task = json.loads((wd / "config.json").read_text())["task"] if (wd / "config.json").exists() else None
    metric = {"denoiser": "psnr", "center": "center_err", "ellipse": "residual_ratio", "e2e": "image_rmse"}.get(task)
    if not tr or metric not in tr[0]:
        metric = None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for recs_, lab in ((tr, "train"), (va, "val")):
        if recs_:
            axes[0].plot([r["step"] for r in recs_], [r["loss"] for r in recs_], label=lab, marker="o" if lab == "val" else None, ms=3)
            if metric:
                axes[1].plot([r["step"] for r in recs_], [r[metric] for r in recs_], label=lab, marker="o" if lab == "val" else None, ms=3)
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    axes[1].set_title(metric or "")
    if metric in ("center_err", "residual_ratio", "image_rmse"):
        axes[1].set_yscale("log")
    if tr:
        axes[2].plot([r["step"] for r in tr], [r["lr"] for r in tr])
    axes[2].set_title("learning rate")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(wd.name)
    fig.tight_layout()
    out = Path(out) if out else wd / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- export and evaluation


# The pipeline settings that belong to each network (its size and how it is fed).
_NETWORK_FIELDS = {
    "denoiser": ("denoiser", "denoise_residual"),
    "center_net": ("center_net", "heatmap_threshold", "heatmap_radius"),
    "center_fine": ("center_fine", "fine_size"),
    "ellipse_net": ("ellipse_net", "ellipse_input", "polar_angles", "polar_radii"),
}


def _widths(pcfg: PipelineConfig, net: str) -> dict:
    return dataclasses.asdict(getattr(pcfg, net))


def export(out: str | os.PathLike, runs: dict[str, str | os.PathLike], *, storage_dtype: str = "float32",
           compute_dtype: Literal["float32", "bfloat16"] = "float32", manifest_extra: dict | None = None) -> Path:
    """Write the inference weights (:func:`prenet_jax.pipeline._weights.save_weights`) from runs.

    Parameters
    ----------
    out : new directory (``weights.npz`` + ``manifest.json``), loadable by
        ``Pipeline.from_pretrained(out)``
    runs : ``{"denoiser"|"center"|"ellipse"|"e2e": run directory}``; e2e gives all three
        networks, separate runs fill in or replace them. A stage without a network
        uses no denoising, the thresholded centre of mass, or the edge fit.
    storage_dtype : ``"float16"`` halves the file
    compute_dtype : stored in the pipeline config (bfloat16 for GPU inference)
    manifest_extra : more provenance for the manifest (e.g. the data recipe)
    """
    unknown = set(runs) - set(TASKS)
    if unknown or not runs:
        raise ValueError(f"runs must name some of {sorted(TASKS)}, got {sorted(runs)}")
    params: dict = {}
    info: dict = {}
    sizes: dict = {}
    base: PipelineConfig | None = None
    for kind in ("e2e", "denoiser", "center", "ellipse"):  # separate runs override the e2e ones
        if kind not in runs:
            continue
        cfg, variables, meta = load_run_variables(runs[kind])
        summary_path = Path(runs[kind]) / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        pc = cfg.pipeline
        if base is None:
            base = pc
        for field in ("image_size", "transform"):
            if getattr(pc, field) != getattr(base, field):
                raise ValueError(f"runs disagree on pipeline.{field} ({getattr(pc, field)} vs {getattr(base, field)}): "
                                 "the networks were trained for different inputs")
        for net in task_networks(kind, pc):
            params[net] = variables[net]
            sizes.update({f: getattr(pc, f) for f in _NETWORK_FIELDS[net]})
            info[net] = {
                "run": str(runs[kind]), "task": cfg.task, "widths": _widths(pc, net),
                "parameters": count_params(variables[net].get("params", {})),
                "data": dataclasses.asdict(cfg.data), "augment": dataclasses.asdict(cfg.augment),
                "loss": dataclasses.asdict(cfg.loss), "seed": cfg.seed, "steps": summary.get("step"),
                "best_step": meta.get("step", summary.get("best_step")), "validation": meta.get("val", summary.get("best_metrics")),
                "status": summary.get("status"), "train_config": cfg.to_dict(),
            }
    # A stage without a trained network: no denoising (the centre network was trained on
    # raw noisy frames), thresholded centre of mass, edge fit of the mean pattern.
    pcfg = base.replace(
        compute_dtype=compute_dtype,
        denoise_method="network" if "denoiser" in params else "none",
        center_method="network" if "center_net" in params else "com",
        ellipse_method="network" if "ellipse_net" in params else "fit",
        **{k: v for k, v in sizes.items()},
    )
    if "center_fine" not in params:  # a one-pass centre network
        pcfg = pcfg.replace(center_fine=None)
    manifest = {"format": "prenet-jax-weights", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **_git_commit(), "versions": _versions(), "networks": info, **(manifest_extra or {})}
    from ..pipeline._weights import save_weights

    return save_weights(out, pcfg, params, manifest, dtype=storage_dtype)


def evaluate_e2e(pcfg: PipelineConfig, variables: dict, cfg: TrainConfig, split: str = "test", batches: int = 8,
                 devices=None, per_batch: bool = False) -> dict:
    """End-to-end metrics of a set of networks on held-out groups (``cfg.augment``,
    ``cfg.group_size``, fixed keys: the same frames for every set of networks).

    Returns the means over ``batches`` batches, or with ``per_batch`` a list per metric."""
    cfg = cfg.replace(task="e2e")
    mesh = make_mesh(devices)
    data = _Data(cfg, split, mesh)
    pc = pcfg.replace(compute_dtype=resolve_pipeline(cfg).compute_dtype, denoise_method="network", center_method="network",
                      ellipse_method="network")
    ev = make_eval_step(cfg, mesh, pc)
    params, extra = split_variables(cfg, _put_replicated(jax.device_get(variables), mesh))
    b = cfg.eval_batch_size or cfg.batch_size
    ms = [ev(params, extra, *data.eval_batch(i, b), _eval_key(cfg.seed + 1000, i)) for i in range(batches)]
    if per_batch:
        host = jax.device_get(ms)
        return {k: [float(m[k]) for m in host] for k in host[0]}
    return _mean_metrics(ms)


# ----------------------------------------------------------------------------- command line


def _distributed_init(args) -> None:
    if getattr(args, "cpu_collectives", None):
        jax.config.update("jax_cpu_collectives_implementation", args.cpu_collectives)
    if args.coordinator:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    elif args.distributed:
        jax.distributed.initialize()  # cluster environments (SLURM, Open MPI, TPU pods) detect themselves


def _run_cli(args) -> int:
    try:
        _distributed_init(args)
        cfg = load_config(args.config)
        for item in args.set or []:
            k, sep, v = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: use KEY=VALUE")
            cfg = override(cfg, k.strip(), v.strip())
        workdir = args.workdir or os.path.join("runs", cfg.name)
        summary = train(cfg, workdir, stop_at=args.stop_at, time_limit=args.time_limit)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary["status"] in ("finished", "early_stopped", "paused") else 1


def _export_cli(args) -> int:
    runs = {k: getattr(args, k) for k in ("denoiser", "center", "ellipse", "e2e") if getattr(args, k)}
    try:
        path = export(args.output, runs, storage_dtype=args.storage_dtype, compute_dtype=args.compute_dtype)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _plot_cli(args) -> int:
    print(plot_curves(args.run, args.output))
    return 0


def _evaluate_cli(args) -> int:
    from ..pipeline._weights import load_weights

    try:
        pcfg, variables, _ = load_weights(args.weights)
        cfg = load_config(args.config)
        for item in args.set or []:
            k, _, v = item.partition("=")
            cfg = override(cfg, k.strip(), v.strip())
        m = evaluate_e2e(pcfg, variables, cfg, split=args.split, batches=args.batches)
    except (ValueError, FileNotFoundError) as err:
        print(f"prenet-jax train evaluate: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(m, indent=2))
    return 0


def _release_cli(args) -> int:
    from ._recipe import load_recipe, run_recipe

    try:
        recipe = load_recipe(args.recipe)
        res = run_recipe(recipe, args.workdir, time_limit=args.time_limit, workers=args.workers, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"prenet-jax train release: error: {err}", file=sys.stderr)
        return 2
    print(f"recipe {res['status']} ({res['stage']}, {res['seconds']:.0f} s)" + ("" if res["status"] == "finished" else ": run the same command again to continue"))
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax train {run, release, export, plot, evaluate}``."""
    p = subparsers.add_parser("train", help="train the networks (optax + orbax) and export inference weights",
                              description="Train the denoiser, centre and ellipse networks and fine-tune them end to end.")
    sub = p.add_subparsers(dest="train_command", required=True, metavar="ACTION")

    r = sub.add_parser("run", help="train or resume one experiment (a config file)")
    r.add_argument("--config", required=True, help="experiment file, e.g. train/configs/denoiser_tiny.py")
    r.add_argument("--workdir", default=None, help="run directory (default runs/<name>); a checkpoint there is resumed")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. --set steps=200 --set pipeline.denoiser.width=8")
    r.add_argument("--time-limit", type=float, default=None, metavar="S", help="checkpoint and stop before S seconds (chunked training)")
    r.add_argument("--stop-at", type=int, default=None, metavar="STEP", help="checkpoint and stop at this step")
    r.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() from the cluster environment")
    r.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="multi-host: address of process 0")
    r.add_argument("--num-processes", type=int, default=None)
    r.add_argument("--process-id", type=int, default=None)
    r.add_argument("--cpu-collectives", default=None, choices=("gloo", "mpi"), help="multi-process CPU runs (tests): gloo")
    r.set_defaults(func=_run_cli)

    rl = sub.add_parser("release", help="the release recipe: simulate, train the three networks, fine-tune end to end, ship, evaluate (resumable)",
                        description="Run or continue a release recipe (default train/release.py): every stage resumes where the last call "
                                    "stopped, and the shipped weights are refreshed whenever a network's validation improves.")
    rl.add_argument("--recipe", default="train/release.py", help="recipe file (default %(default)s, in a checkout)")
    rl.add_argument("--workdir", default=str(cache_dir() / "release"), help="data, runs and reports (default %(default)s)")
    rl.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop (checkpointed) before S seconds; rerun to continue")
    rl.add_argument("--workers", type=int, default=None, help="simulation worker processes (default: the CPU cores)")
    rl.add_argument("--stop-after", default=None, metavar="STAGE", help="stop after this stage (simulate, denoiser, center, ellipse, e2e, evalset, evaluate)")
    rl.set_defaults(func=_release_cli)

    e = sub.add_parser("export", help="write inference weights (weights.npz + manifest.json) from run directories")
    e.add_argument("-o", "--output", required=True, help="new weights directory")
    for k in ("denoiser", "center", "ellipse", "e2e"):
        e.add_argument(f"--{k}", default=None, metavar="RUN", help=f"run directory of the {k} task")
    e.add_argument("--storage-dtype", default="float32", choices=("float32", "float16"))
    e.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"), help="stored in the pipeline config")
    e.set_defaults(func=_export_cli)

    pl = sub.add_parser("plot", help="redraw curves.png of a run")
    pl.add_argument("run")
    pl.add_argument("-o", "--output", default=None)
    pl.set_defaults(func=_plot_cli)

    ev = sub.add_parser("evaluate", help="end-to-end metrics of exported weights on held-out groups")
    ev.add_argument("--weights", required=True)
    ev.add_argument("--config", required=True, help="an e2e config: data, augmentation and group size")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--batches", type=int, default=8)
    ev.set_defaults(func=_evaluate_cli)
    return p
