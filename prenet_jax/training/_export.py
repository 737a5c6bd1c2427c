"""Export trained runs as inference weights, and score a set of networks end to end."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import jax

from .._util import git_commit, versions
from ..config import PipelineConfig
from ..models import count_params
from ..stages import E2E_TASK, STAGES, TASKS, methods_for, network, task_networks
from ._checkpoints import _put_replicated, load_run_variables
from ._loop import _Data, _mean_metrics
from ._steps import _eval_key, make_eval_step, make_mesh, split_variables
from .config import TrainConfig, resolve_pipeline

__all__ = ["export", "evaluate_e2e"]


def _versions() -> dict:
    return {
        **versions("flax", "optax", "orbax.checkpoint"),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()][:1] + [f"x{jax.device_count()}"],
    }


def _widths(pcfg: PipelineConfig, net: str) -> dict:
    return dataclasses.asdict(getattr(pcfg, net))


def export(
    out: str | os.PathLike,
    runs: dict[str, str | os.PathLike],
    *,
    storage_dtype: str = "float32",
    compute_dtype: Literal["float32", "bfloat16"] = "float32",
    manifest_extra: dict | None = None,
    networks: Sequence[str] | None = None,
    overrides: dict | None = None,
) -> Path:
    """Write the inference weights (:func:`prenet_jax.pipeline._weights.save_weights`) from runs.

    Parameters
    ----------
    out : new directory (``weights.npz`` + ``manifest.json``), loadable by
        ``Pipeline.from_pretrained(out)``
    runs : ``{task: run directory}`` (:data:`prenet_jax.stages.TASKS`); e2e gives all three
        networks, separate runs fill in or replace them. A stage without a network
        uses its classical method: the dose-adaptive Gaussian filter, the thresholded
        centre of mass, the edge fit.
    storage_dtype : ``"float16"`` halves the file
    compute_dtype : stored in the pipeline config (bfloat16 for GPU inference)
    manifest_extra : more provenance for the manifest (e.g. the data recipe)
    networks : ship only these networks of the runs (e.g. the centre stage's
        ``CENTER.keys`` where the evaluation says the others lose to their classical
        methods); None: all of them
    overrides : more :class:`~prenet_jax.config.PipelineConfig` fields for the shipped
        pipeline (e.g. ``{"center_consensus": "friedel"}``)
    """
    unknown = set(runs) - set(TASKS)
    if unknown or not runs:
        raise ValueError(f"runs must name some of {sorted(TASKS)}, got {sorted(runs)}")
    params: dict = {}
    info: dict = {}
    sizes: dict = {}
    base: PipelineConfig | None = None
    for kind in (E2E_TASK, *(t for t in TASKS if t != E2E_TASK)):  # separate runs override the e2e ones
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
                raise ValueError(
                    f"runs disagree on pipeline.{field} ({getattr(pc, field)} vs {getattr(base, field)}): "
                    "the networks were trained for different inputs"
                )
        for net in task_networks(kind, pc):
            params[net] = variables[net]
            # the network's widths and the settings that say how it is fed
            sizes.update({f: getattr(pc, f) for f in (net, *network(net).fields)})
            info[net] = {
                "run": str(runs[kind]),
                "task": cfg.task,
                "widths": _widths(pc, net),
                "parameters": count_params(variables[net].get("params", {})),
                "data": dataclasses.asdict(cfg.data),
                "augment": dataclasses.asdict(cfg.augment),
                "loss": dataclasses.asdict(cfg.loss),
                "seed": cfg.seed,
                "steps": summary.get("step"),
                "best_step": meta.get("step", summary.get("best_step")),
                "validation": meta.get("val", summary.get("best_metrics")),
                "status": summary.get("status"),
                "train_config": cfg.to_dict(),
            }
    if networks is not None:
        missing = set(networks) - set(params)
        if missing:
            raise ValueError(f"networks {sorted(missing)} are not in the runs (they hold {sorted(params)})")
        params = {k: v for k, v in params.items() if k in networks}
        info = {k: v for k, v in info.items() if k in networks}
    for key in params:
        refined = network(key).refines
        if refined is not None and refined not in params:
            raise ValueError(f"{key} refines {refined}'s estimate: ship {refined} with it")
    # A stage without a trained network runs its classical method. The dose-adaptive
    # Gaussian filter, not raw frames, feeds the centre network: on held-out patterns at
    # 1e4 electrons its mean error is 1.12 px that way, against 1.46 px on raw frames
    # (docs/training.md).
    pcfg = base.replace(compute_dtype=compute_dtype, gaussian_sigma=None, **methods_for(params), **sizes)
    # a refining pass that does not ship is no pass (a one-pass centre network)
    pcfg = pcfg.replace(**{n.key: None for st in STAGES for n in st.networks if n.refines and n.key not in params})
    pcfg = pcfg.replace(**(overrides or {}))
    manifest = {
        "format": "prenet-jax-weights",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **git_commit(),
        "versions": _versions(),
        "networks": info,
        **(manifest_extra or {}),
    }
    from ..pipeline import save_weights

    return save_weights(out, pcfg, params, manifest, dtype=storage_dtype)


def evaluate_e2e(
    pcfg: PipelineConfig, variables: dict, cfg: TrainConfig, split: str = "test", batches: int = 8, devices=None, per_batch: bool = False
) -> dict:
    """End-to-end metrics of a set of networks on held-out groups (``cfg.augment``,
    ``cfg.group_size``, fixed keys: the same frames for every set of networks).

    Returns the means over ``batches`` batches, or with ``per_batch`` a list per metric."""
    cfg = cfg.replace(task="e2e")
    mesh = make_mesh(devices)
    data = _Data(cfg, split, mesh)
    pc = pcfg.replace(
        compute_dtype=resolve_pipeline(cfg).compute_dtype, denoise_method="network", center_method="network", ellipse_method="network"
    )
    ev = make_eval_step(cfg, mesh, pc)
    params, extra = split_variables(cfg, _put_replicated(jax.device_get(variables), mesh))
    b = cfg.eval_batch_size or cfg.batch_size
    ms = [ev(params, extra, *data.eval_batch(i, b), _eval_key(cfg.seed + 1000, i)) for i in range(batches)]
    if per_batch:
        host = jax.device_get(ms)
        return {k: [float(m[k]) for m in host] for k in host[0]}
    return _mean_metrics(ms)
