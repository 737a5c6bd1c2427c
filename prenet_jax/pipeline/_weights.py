"""Trained weights: a small inference format (one ``.npz`` of arrays + a JSON manifest).

Checkpoints of training are orbax directories; the pipeline only needs the final
variables, flattened to ``"<network>/<collection>/<path>"`` keys. No network
access is ever made: bundled weights live in ``prenet_jax/weights/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from .._util import atomic_path
from ..config import PipelineConfig

__all__ = ["save_weights", "load_weights", "load_pretrained", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_SEP = "/"


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{_SEP}{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(dict(v), key))
        else:
            out[key] = np.asarray(jax.device_get(v))
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split(_SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_weights(
    path: str | os.PathLike, config: PipelineConfig, params: dict, manifest: dict | None = None, dtype: str = "float32"
) -> Path:
    """Write ``path`` (a directory) with ``weights.npz`` and ``manifest.json``, atomically.

    ``dtype`` may be ``"float16"`` or ``"bfloat16"``-like storage (``"float16"``) to halve the size;
    arrays are restored to float32 on load.
    """
    path = Path(path)
    flat = _flatten(params)
    if dtype != "float32":
        flat = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in flat.items()}
    meta = {"config": config.to_dict(), "storage_dtype": dtype, **(manifest or {})}
    if path.exists():
        raise FileExistsError(f"{path} exists; remove it first")
    with atomic_path(path, directory=True) as tmp:
        np.savez(tmp / "weights.npz", **flat)
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=2, default=str))
    return path


def load_weights(path: str | os.PathLike) -> tuple[PipelineConfig, dict, dict]:
    """Read a directory written by :func:`save_weights`: ``(config, params, manifest)``."""
    path = Path(path)
    if not (path / "weights.npz").is_file() or not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path} holds no weights.npz + manifest.json (written by prenet_jax save_weights / train export)")
    manifest = json.loads((path / "manifest.json").read_text())
    with np.load(path / "weights.npz") as z:
        flat = {k: z[k].astype(np.float32) if z[k].dtype.kind == "f" else z[k] for k in z.files}
    return PipelineConfig.from_dict(manifest["config"]), _unflatten(flat), manifest


def load_pretrained(path: str | os.PathLike | None = None) -> tuple[PipelineConfig, dict]:
    """The bundled weights, or those at ``path``."""
    if path is None:
        path = WEIGHTS_DIR / "release"
        if not (path / "weights.npz").is_file():
            raise FileNotFoundError(
                "this installation of prenet-jax ships no trained weights yet "
                f"(looked in {path}). Use Pipeline.classical() for the classical methods, "
                "Pipeline.init(key, config) for untrained networks, or "
                "Pipeline.from_pretrained(path) with weights exported by training."
            )
    config, params, _ = load_weights(path)
    return config, params
