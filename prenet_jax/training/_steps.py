"""The jitted steps: state, optimiser, the loss of each task, and the train and eval steps.

``state = {"step", "params", "extra", "opt_state"}`` (plain dicts of arrays: ``params``
the trained ``"params"`` collections, ``extra`` the rest: BatchNorm statistics and
frozen networks). One ``jax.jit`` per task with explicit shardings: the clean batch is
split over a 1-D ``"data"`` mesh of every device of every process, the state is
replicated, and the state is donated. The augmentation runs inside the step from the
key ``fold_in(fold_in(key(seed), 0), step)``: a resumed run repeats an uninterrupted
one exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..config import PipelineConfig
from ..pipeline import init_network_params
from .config import TrainConfig, resolve_pipeline
from .tasks import task_module

__all__ = ["make_mesh", "make_optimizer", "split_variables", "init_state", "make_train_step", "make_eval_step"]


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
        variables = init_network_params(key, resolve_pipeline(cfg).replace(compute_dtype="float32"))
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
    return task_module(cfg.task).task_loss(cfg, pcfg, variables, extra, clean, zero, key, k_extra, train)


def _train_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), step)


def _eval_key(seed: int, i: int | jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), i)


def make_train_step(
    cfg: TrainConfig, tx: optax.GradientTransformation, sched: optax.Schedule, mesh: Mesh, pcfg: PipelineConfig | None = None
) -> Callable:
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
        metrics = {
            **metrics,
            "grad_norm": optax.global_norm(grads),
            "lr": sched(state["step"]),
            **{f"grad_norm_{k}": optax.global_norm(v) for k, v in grads.items()},
        }
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
