"""The pipelines behind the rows: the networks to evaluate (``--weights``), the
classical and network stages each table runs, and the ``+refine`` self-calibration
of ellipse estimates.

A network stage runs alone (its pipeline has the other stages off), so each table
scores one stage on inputs with a known truth; table 4 runs the whole pipeline.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..config import PipelineConfig
from ..conventions import Ellipse
from ..ops import frame_center, refine_center
from ..pipeline import Pipeline, as_counts
from ..stages import CENTER, DENOISE, ELLIPSE, Stage, methods_for
from ._config import REFINE, Methods

__all__ = [
    "classical_center_pipelines",
    "e2e_pipelines",
    "ellipse_pipelines",
    "load_network",
    "network_center_pipelines",
    "network_centers",
    "refine_ellipses",
]


def load_network(spec: str | None, frame_size: int) -> tuple[Pipeline | None, str]:
    """The networks that ``--weights`` names, and the note the report gives them.

    Parameters
    ----------
    spec : a directory of exported weights, ``auto`` or None (the bundled ones),
        ``untrained`` (tiny networks with random weights: they test the harness) or ``none``
    frame_size : the side of the evaluation frames (sizes the untrained networks)

    Returns
    -------
    ``(pipeline or None, note)``; None when no weights are found (no error: the report
    then says why the network rows are missing).
    """
    if spec == "none":
        return None, "not evaluated (--weights none)"
    if spec == "untrained":
        size = frame_size
        while size > 32 and size % 2 == 0:
            size //= 2
        cfg = PipelineConfig.tiny(image_size=max(8, size - size % 4))
        return Pipeline.init(
            jax.random.key(0), cfg
        ), "UNTRAINED tiny networks (random weights: the numbers test the harness, not the method)"
    try:
        pipe = Pipeline.from_pretrained(None if spec in (None, "auto") else spec)
    except FileNotFoundError:
        return None, "no trained weights yet (rows left out; rerun with --weights DIR once training exports them)"
    where = "bundled" if spec in (None, "auto") else spec
    return pipe, f"trained weights ({where}; networks: {', '.join(sorted(pipe.params))})"


# ----------------------------------------------------------------------------- table 2


def _center_pipeline(center_method: str, batch: int, refine: bool = False) -> Pipeline:
    return Pipeline(
        PipelineConfig(
            denoise_method="none",
            center_method=center_method,
            ellipse_method="none",
            gaussian_sigma=1.0,
            batch_size=batch,
            center_refine="friedel" if refine else "none",
        )
    )


def classical_center_pipelines(methods: Methods, batch: int) -> dict[str, Pipeline]:
    """``{method: pipeline}`` of the classical centre rows asked for, with and without
    refinement, on the raw frames (no denoising)."""
    pipes = {}
    for name in ("com", "friedel"):
        if methods.wants(name):
            pipes[name] = _center_pipeline(name, batch)
    for name in ("com", "friedel"):
        if methods.wants(name + REFINE):
            pipes[name + REFINE] = _center_pipeline(name, batch, refine=True)
    return pipes


def _only(params: dict, stage: Stage) -> dict:
    """The parameters of ``stage``'s networks."""
    return {k: v for k, v in params.items() if k in stage.keys}


def network_center_pipelines(methods: Methods) -> tuple[Pipeline | None, dict[str, Pipeline]]:
    """The centre finder as shipped, in two parts: the denoiser (None if not trained) and
    ``{method: pipeline}`` of the centre networks on its output, with and without refinement.

    Run in sequence they are the pipeline's ``denoise_stage`` then ``center_stage``; apart,
    the denoised frames are computed once for the rows with and without refinement.
    """
    net = methods.network
    if not methods.wants("network") or net is None or CENTER.network not in net.params:
        return None, {}
    denoiser = None
    cfg = net.config.replace(center_method="network", ellipse_method="none")
    if DENOISE.network in net.params:
        denoiser = Pipeline(net.config.replace(center_method="none", ellipse_method="none"), _only(net.params, DENOISE))
        cfg = cfg.replace(denoise_method="none")
    # else the centre pipeline denoises as shipped (a classical filter, or none)
    centers = Pipeline(cfg, _only(net.params, CENTER))
    pipes = {"network": centers}
    if methods.wants("network" + REFINE):
        pipes["network" + REFINE] = centers.with_refinement()
    return denoiser, pipes


@functools.partial(jax.jit, static_argnames=("window", "steps"))
def _friedel_refined(frames, centers, window: int, steps: int):
    x, _ = as_counts(frames)
    return jax.vmap(functools.partial(refine_center, window=window, steps=steps))(x, centers)[0]


def network_centers(pipes: dict[str, Pipeline], frames: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """``{method: (N, 2) centres}`` of :func:`network_center_pipelines`'s rows on
    ``frames``. The ``+refine`` row starts its Friedel refinement from the network row's
    centres instead of running the networks a second time: the same numbers as its own
    pipeline's (the refinement of a centre depends on that centre and the frame only),
    for one pass of the networks instead of two."""
    found = {}
    for name, p in pipes.items():
        base = found.get(name.removesuffix(REFINE)) if name.endswith(REFINE) else None
        if base is None or p.config.denoise_method != "none":  # it refines the frames it denoised itself
            found[name] = p.find_centers(frames)
            continue
        out = np.empty_like(base)
        for i in range(0, frames.shape[0], batch):
            c = jnp.asarray(base[i : i + batch], jnp.float32)
            out[i : i + batch] = np.asarray(
                _friedel_refined(jnp.asarray(frames[i : i + batch]), c, p.config.refine_window, p.config.refine_steps)
            )
        found[name] = out
    return found


# ----------------------------------------------------------------------------- table 3


def ellipse_pipelines(methods: Methods) -> dict[str, Pipeline]:
    """``{method: pipeline}`` of the ellipse rows asked for: the edge fit and the network."""
    pipes = {}
    if methods.wants("fit"):
        pipes["fit"] = Pipeline(PipelineConfig(denoise_method="none", center_method="none", ellipse_method="fit"))
    if methods.wants("network") and methods.has_net(ELLIPSE.network):
        net = methods.network
        pipes["network"] = Pipeline(
            net.config.replace(denoise_method="none", center_method="none", ellipse_method="network"), _only(net.params, ELLIPSE)
        )
    return pipes


@jax.jit
def _refine_ellipses_jit(images, starts, c0):
    from ..ops._refine import _refine_ellipse_jit

    band = (3.0, images.shape[-1] / 2.0 - 3.0)

    def one(image, start):
        return _refine_ellipse_jit(image, start, c0, 30, False, band, 128, 96, "cubic")

    return jax.vmap(one)(images, starts)


def refine_ellipses(images: np.ndarray, est: np.ndarray, batch: int = 16) -> np.ndarray:
    """``(ratio, angle)`` rows of ``est`` refined by :func:`prenet_jax.ops.refine_ellipse`
    on their recentred mean patterns (vmapped in batches); a refinement that does not
    lower the objective, or a missing start, keeps the start."""
    from ..ops import ellipse_of_params, ellipse_params

    out = est.copy()
    idx = np.flatnonzero(np.all(np.isfinite(est), axis=1))
    c0 = jnp.asarray(frame_center(images.shape[-2:]), jnp.float32)
    for start in range(0, idx.size, batch):
        sel = idx[start : start + batch]
        starts = jnp.stack([ellipse_params(Ellipse(float(max(est[i, 0], 1.0)), float(est[i, 1]))) for i in sel])
        x, before, after = _refine_ellipses_jit(jnp.asarray(images[sel]), starts, c0)
        for j, i in enumerate(sel):
            if float(after[j]) < float(before[j]) and np.all(np.isfinite(np.asarray(x[j]))):
                ratio, angle = ellipse_of_params(x[j])
                out[i] = float(ratio), float(angle)
    return out


# ----------------------------------------------------------------------------- table 4


def e2e_pipelines(methods: Methods, sigma: float, batch: int) -> dict[str, Pipeline]:
    """The pipelines of table 4; a network that did not ship is replaced by its classical stage."""
    out = {
        "none": Pipeline(PipelineConfig(denoise_method="none", center_method="none", ellipse_method="none", batch_size=batch)),
        "classical": Pipeline(PipelineConfig.classical(gaussian_sigma=sigma, batch_size=batch)),
        "classical_friedel": Pipeline(PipelineConfig.classical(gaussian_sigma=sigma, center_method="friedel", batch_size=batch)),
    }
    net = methods.network
    if net is not None and methods.wants("network"):
        cfg = net.config.replace(**methods_for(net.params), gaussian_sigma=sigma, batch_size=batch)
        out["network"] = Pipeline(cfg, dict(net.params))
    return out
