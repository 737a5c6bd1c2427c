"""The centre task (``task="center"``): its batch, loss and metrics.

The batch is augmented frames (noisy, clean or either by a coin flip) and their true
centres; the loss is the binary cross-entropy of the heatmap logits against a Gaussian
of ``heatmap_sigma`` px at the true centre, plus a Huber loss on the coordinate
:func:`prenet_jax.ops.heatmap_center` extracts (the heatmap teaches where, the
coordinate term removes the sub-pixel bias of the thresholded centroid), for the coarse
network and, where the pipeline has one, the fine one. The validation metric is the
error of the pipeline's own coarse-to-fine centre (:data:`prenet_jax.stages.CENTER`.metric).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ...config import PipelineConfig
from ...corruption import AugmentConfig, augment
from ...models import UNet
from ...ops import heatmap_center, resize, resize_coordinates
from ...pipeline import (
    as_counts,
    center_fine_stage,
    crop_frames,
    crop_origin,
    network_dtype,
    normalize,
)
from ...stages import CENTER
from .._losses import LossConfig, _huber

__all__ = ["task_loss", "center_batch", "gaussian_heatmap", "center_loss"]

#: The centre stage's coarse and fine networks.
_COARSE, _FINE = CENTER.keys


def center_batch(key: jax.Array, clean: jax.Array, zero: jax.Array, aug: AugmentConfig, use_clean: bool | str = False):
    """``(frames (B, H, W), centres (B, 2))``: the centre network's input and label.

    ``use_clean``: ``"noisy"`` (or False) the detector frames, ``"clean"`` (or True)
    their noise-free expectation, ``"mixed"`` each one or the other by a coin flip.
    """
    a = augment(key, clean, zero, aug)
    mode = {False: "noisy", True: "clean"}.get(use_clean, use_clean)
    if mode == "noisy":
        return a.noisy, a.center
    if mode == "clean":
        return a.target, a.center
    coin = jax.random.bernoulli(jax.random.fold_in(key, 2), 0.5, (a.noisy.shape[0], 1, 1))
    return jnp.where(coin, a.target, a.noisy), a.center


def gaussian_heatmap(centers: jax.Array, shape: tuple[int, int], sigma: float) -> jax.Array:
    """``(B, 2)`` (row, col) -> ``(B, H, W)`` Gaussians of peak 1 (pixel centres at integers)."""
    rows = jnp.arange(shape[0], dtype=jnp.float32)[None, :, None]
    cols = jnp.arange(shape[1], dtype=jnp.float32)[None, None, :]
    d2 = (rows - centers[:, 0, None, None]) ** 2 + (cols - centers[:, 1, None, None]) ** 2
    return jnp.exp(-d2 / (2.0 * sigma**2))


def _heatmap_loss(lcfg: LossConfig, cfg: PipelineConfig, logits: jax.Array, centers: jax.Array):
    """BCE of heatmap ``logits (B, S, S)`` against Gaussians at ``centers (B, 2)`` (in the
    heatmap's pixels), plus the Huber loss of the extracted coordinate. Returns
    ``(loss, bce, coord, found)``."""
    s = logits.shape[-2:]
    target = gaussian_heatmap(centers, s, lcfg.heatmap_sigma)
    # Per frame: summed over pixels (the positives are a few dozen pixels of S^2).
    bce = jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, target), axis=(-2, -1)) / (2 * jnp.pi * lcfg.heatmap_sigma**2))
    extract = functools.partial(heatmap_center, threshold=cfg.heatmap_threshold, radius=cfg.heatmap_radius)
    found = jax.vmap(extract)(jax.nn.sigmoid(logits))
    coord = jnp.mean(jnp.sum(_huber(found - centers, lcfg.huber_delta), -1))
    return lcfg.heatmap_weight * bce + lcfg.coord_weight * coord, bce, coord, found


def center_loss(
    cfg: PipelineConfig,
    lcfg: LossConfig,
    variables,
    frames: jax.Array,
    centers: jax.Array,
    key: jax.Array | None = None,
    full: bool = False,
):
    """``frames (B, H, W)`` counts, true ``centers (B, 2)`` -> ``(loss, metrics)``.

    ``variables``: the centre stage's networks by key (``CENTER.keys``: coarse, fine;
    the fine network only with ``cfg.center_fine``). The coarse network sees the frame resampled to
    ``image_size``; the fine one a ``fine_size`` native crop centred on the true centre
    plus a Gaussian error of ``lcfg.fine_offset`` px (from ``key``), as the coarse pass
    would leave it.

    Metrics: ``coarse_err`` (px, native) of the coarse pass; with a fine network
    ``fine_err`` on those crops; ``center_err``, ``center_rmse`` of the centre the
    pipeline would return (with ``full``, the fine pass on the crop the coarse pass
    chooses, i.e. exactly :func:`prenet_jax.pipeline.center_stage`; otherwise the fine
    pass's result on the training crops, or the coarse one).
    """
    s = cfg.image_size
    shape = frames.shape[-2:]
    xn, _ = normalize(as_counts(frames)[0], cfg.transform)
    logits = UNet(cfg.center_net, sigmoid=False, dtype=network_dtype(cfg)).apply(variables[_COARSE], resize(xn, (s, s))).astype(jnp.float32)
    c_net = resize_coordinates(centers, shape, (s, s))
    loss, bce, coord, found = _heatmap_loss(lcfg, cfg, logits, c_net)
    coarse = resize_coordinates(found, (s, s), shape)
    coarse_err = jnp.linalg.norm(coarse - centers, axis=-1)
    m = {"bce": bce, "coord": coord, "coarse_err": jnp.mean(coarse_err)}
    err = coarse_err
    if cfg.center_fine is not None:
        f = cfg.fine_size
        guess = centers + lcfg.fine_offset * jax.random.normal(key, centers.shape, jnp.float32)
        origin = crop_origin(guess, f)
        crops = crop_frames(xn, origin, f)
        fine_logits = UNet(cfg.center_fine, sigmoid=False, dtype=network_dtype(cfg)).apply(variables[_FINE], crops).astype(jnp.float32)
        f_loss, f_bce, f_coord, f_found = _heatmap_loss(lcfg, cfg, fine_logits, centers - origin)
        loss = loss + lcfg.fine_weight * f_loss
        err = jnp.linalg.norm(origin + f_found - centers, axis=-1)
        m.update(fine_bce=f_bce, fine_coord=f_coord, fine_err=jnp.mean(err))
        if full:
            err = jnp.linalg.norm(center_fine_stage(cfg, variables, xn, jax.lax.stop_gradient(coarse)) - centers, axis=-1)
    return loss, {"loss": loss, **m, "center_err": jnp.mean(err), "center_rmse": jnp.sqrt(jnp.mean(err**2))}


def task_loss(cfg, pcfg: PipelineConfig, variables: dict, extra: dict, clean, zero, key, k_extra, train: bool):
    """``(loss, (metrics, extra))`` of one batch of clean patterns (the step's contract)."""
    frames, centers = center_batch(key, clean, zero, cfg.augment, use_clean=cfg.center_input)
    nets = {k: variables[k] for k in cfg.networks}
    loss, m = center_loss(pcfg, cfg.loss, nets, frames, centers, k_extra, full=not train)
    return loss, (m, extra)
