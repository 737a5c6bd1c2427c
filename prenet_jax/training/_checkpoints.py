"""Checkpoints (orbax) and the variables of a run: written on any mesh, restored on any.

Restoring passes an explicit target (``jax.ShapeDtypeStruct`` with this machine's
shardings) or asks for numpy arrays, so the devices recorded in a checkpoint are never
needed: a run checkpointed on 4 devices resumes on 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._steps import _merge
from .config import TrainConfig

__all__ = ["load_run_variables"]


def _put_replicated(tree, mesh: Mesh):
    """Host arrays (the same on every process) -> replicated global arrays."""
    repl = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, repl, lambda idx: x[idx])

    return jax.tree.map(put, tree)


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
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(state, ocdbt_target_data_file_size=self.file_size), meta=ocp.args.JsonSave(meta)
        )
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
        from ..pipeline import load_weights

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
        raise ValueError(
            f"init_from {network}: the stored network does not match this config's {network} size "
            "(width, depth, stages); use the same pipeline sizes as the run that trained it"
        )
