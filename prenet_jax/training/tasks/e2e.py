"""The end-to-end task (``task="e2e"``): every network through the whole pipeline.

The batch is groups of frames sharing one ellipse (one data set each); the loss is the
corrected frames against the ideal ones (centred, undistorted, noise-free) in the sqrt
space, plus a Huber loss on the centres. The validation metric is the corrected frames'
RMSE (:func:`prenet_jax.stages.task_metric`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ...config import PipelineConfig
from ...corruption import AugmentConfig, add_noise, distort, sample_parameters
from ...models import ResNet
from ...ops import frame_center
from ...pipeline import (
    as_counts,
    center_stage,
    denoise_stage,
    ellipse_network_input,
    network_dtype,
    warp_stage,
)
from ...stages import ELLIPSE
from .._losses import LossConfig, _huber
from .ellipse import _ellipse_metrics, ellipse_targets, matrix_from_output

__all__ = ["task_loss", "E2EBatch", "e2e_batch", "e2e_forward", "e2e_loss"]


class E2EBatch(NamedTuple):
    """Groups of frames sharing one ellipse (one "data set" each).

    noisy : (G, K, H, W) detector counts
    ideal : (G, K, H, W) what the pipeline should return: the noise-free pattern in the
        same units, zero angle on ((H-1)/2, (W-1)/2), no ellipse
    center : (G, K, 2) true centres in ``noisy``
    ratio, angle : (G,) the group's ellipse
    """

    noisy: jax.Array
    ideal: jax.Array
    center: jax.Array
    ratio: jax.Array
    angle: jax.Array


def e2e_batch(key: jax.Array, clean: jax.Array, zero: jax.Array, aug: AugmentConfig, group_size: int) -> E2EBatch:
    """Frames for end-to-end fine-tuning from ``G`` clean patterns, ``K = group_size`` each.

    Built from the pieces of :mod:`prenet_jax.corruption` (so the geometry and noise are the
    same as in :func:`augment`), with the ellipse, gain and dose drawn once per group (they
    belong to the microscope and the data set) and shift, in-plane rotation and noise
    per frame (descan and grain orientation vary across a scan).
    """
    g, h, w = clean.shape
    k = group_size
    k_par, k_noise = jax.random.split(key)
    p = sample_parameters(k_par, g * k, aug)
    per_group = lambda v: jnp.repeat(v.reshape(g, k)[:, 0], k)  # noqa: E731
    ratio, angle, scale, dose = (per_group(p[n]) for n in ("ratio", "angle", "scale", "dose"))
    src = jnp.repeat(clean, k, axis=0)
    z = jnp.repeat(jnp.broadcast_to(zero, (g, 2)), k, axis=0)
    distorted, center = distort(src, z, p["shift"], ratio, angle, p["rotation"], aug.method)
    c0 = jnp.asarray(frame_center((h, w)), jnp.float32)
    ideal, _ = distort(src, z, c0 - z, jnp.ones_like(ratio), jnp.zeros_like(angle), p["rotation"], aug.method)
    shot = aug.dose_range is not None
    units = scale * (dose if shot else 1.0)
    electrons = jnp.maximum(distorted, 0.0) * (dose if shot else 1.0)[:, None, None]
    noisy = add_noise(k_noise, electrons, scale, p["read_noise"], aug, shot_noise=shot)
    ideal = jnp.maximum(ideal, 0.0) * units[:, None, None]
    shape = (g, k, h, w)
    return E2EBatch(noisy.reshape(shape), ideal.reshape(shape), center.reshape(g, k, 2), ratio[::k], angle[::k])


def e2e_forward(cfg: PipelineConfig, variables: dict, noisy: jax.Array):
    """The pipeline on ``G`` groups of ``K`` frames ``(G, K, H, W)``, every step differentiable.

    denoise -> heatmap -> centre -> recentred mean of each group (pass 0) -> ellipse
    network -> ONE composed warp per frame with the group's ellipse (pass 1). The
    ResNet runs with its running BatchNorm averages (G averaged patterns are too few
    for batch statistics).

    Returns
    -------
    corrected : (G, K, H, W) counts
    centers : (G, K, 2) (row, col) in the input frames
    ellipse_out : (G, 3) the ResNet's (cos 2t, sin 2t, ratio)
    """
    g, k, h, w = noisy.shape
    x = denoise_stage(cfg, variables, as_counts(noisy.reshape(g * k, h, w))[0])
    centers = center_stage(cfg, variables, x)
    recentred = warp_stage(cfg, x, centers, jnp.eye(2, dtype=jnp.float32)).reshape(g, k, h, w)
    inputs = jax.vmap(lambda m: ellipse_network_input(cfg, m))(recentred.mean(1))
    out = ResNet(cfg.ellipse_net, dtype=network_dtype(cfg)).apply(variables[ELLIPSE.network], inputs, train=False).astype(jnp.float32)
    d = matrix_from_output(out)
    xg, cg = x.reshape(g, k, h, w), centers.reshape(g, k, 2)
    corrected = jax.vmap(lambda xx, cc, dd: warp_stage(cfg, xx, cc, dd))(xg, cg, d)
    return corrected, cg, out


def e2e_image_error(corrected: jax.Array, ideal: jax.Array, eps: float) -> jax.Array:
    """Per-frame mean squared difference in the sqrt space of each ideal frame's maximum."""
    m = jnp.max(ideal, axis=(-2, -1), keepdims=True)
    m = jnp.where(m > 0, m, 1.0)
    a = jnp.sqrt(jax.nn.relu(corrected / m) + eps)
    b = jnp.sqrt(ideal / m + eps)
    return jnp.mean(jnp.square(a - b), axis=(-2, -1))


def e2e_loss(cfg: PipelineConfig, lcfg: LossConfig, variables: dict, batch):
    """:class:`prenet_jax.training._batches.E2EBatch` -> ``(loss, metrics)``.

    Metrics: ``image_rmse`` (the end-to-end error: RMS difference of the corrected and
    ideal frames in the normalised sqrt space), ``image_rel_l2`` (relative L2 error in
    counts), ``center_err`` (px), ``ratio_err``, ``angle_err_deg``, ``residual_ratio``.
    """
    corrected, centers, out = e2e_forward(cfg, variables, batch.noisy)
    img = e2e_image_error(corrected, batch.ideal, lcfg.sqrt_eps)
    cerr = centers - batch.center
    t = ellipse_targets(batch.ratio, batch.angle)
    ell = jnp.mean(jnp.sum(jnp.square(out[:, :2] - t[:, :2]), -1)) + lcfg.ratio_weight * jnp.mean(jnp.square(out[:, 2] - t[:, 2]))
    loss = (
        lcfg.e2e_image_weight * jnp.mean(img)
        + lcfg.e2e_center_weight * jnp.mean(jnp.sum(_huber(cerr, lcfg.huber_delta), -1))
        + lcfg.e2e_ellipse_weight * ell
    )
    rel = jnp.linalg.norm((corrected - batch.ideal).reshape(-1, corrected.shape[-2] * corrected.shape[-1]), axis=-1) / jnp.maximum(
        jnp.linalg.norm(batch.ideal.reshape(-1, corrected.shape[-2] * corrected.shape[-1]), axis=-1), 1e-30
    )
    return loss, {
        "loss": loss,
        "image_rmse": jnp.sqrt(jnp.mean(img)),
        "image_rel_l2": jnp.mean(rel),
        "center_err": jnp.mean(jnp.linalg.norm(cerr, axis=-1)),
        **_ellipse_metrics(out, batch.ratio, batch.angle),
    }


def task_loss(cfg, pcfg: PipelineConfig, variables: dict, extra: dict, clean, zero, key, k_extra, train: bool):
    """``(loss, (metrics, extra))`` of one batch of clean patterns (the step's contract)."""
    batch = e2e_batch(key, clean, zero, cfg.augment, cfg.group_size)
    loss, m = e2e_loss(pcfg, cfg.loss, variables, batch)
    return loss, (m, extra)
