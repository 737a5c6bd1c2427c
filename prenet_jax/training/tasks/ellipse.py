"""The ellipse task (``task="ellipse"``): its batch, loss and metrics.

The batch mimics pass 0: averaged patterns distorted, shifted, recentred with a centre
error and made into the network input; the loss is the squared error of
``(cos 2 theta, sin 2 theta)`` plus ``ratio_weight`` x the squared error of the ratio.
The validation metric is the residual ratio left after undoing the predicted ellipse
(:data:`prenet_jax.stages.ELLIPSE`.metric).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...config import PipelineConfig
from ...corruption import AugmentConfig, augment
from ...models import ResNet
from ...pipeline import (
    as_counts,
    ellipse_network_input,
    network_dtype,
    warp_stage,
)
from ...stages import ELLIPSE
from .._losses import LossConfig

__all__ = ["task_loss", "ellipse_batch", "ellipse_targets", "matrix_from_output", "residual_ratio", "ellipse_loss"]


def ellipse_batch(key: jax.Array, rings: jax.Array, zero: jax.Array, aug: AugmentConfig, pcfg: PipelineConfig, center_error: float):
    """``(inputs (B, S, S), ratio (B,), angle (B,))`` for the ellipse network.

    Mimics pass 0 of the pipeline: the averaged pattern is distorted and shifted
    (``aug``, at the high dose of thousands of frames), recentred with the pipeline's own
    warp at the true centre plus a Gaussian error of ``center_error`` px (what the centre
    network leaves), and made into the network input by ``ellipse_network_input``.
    """
    k_aug, k_err = jax.random.split(key)
    a = augment(k_aug, rings, zero, aug)
    found = a.center + center_error * jax.random.normal(k_err, a.center.shape, jnp.float32)
    frames = as_counts(a.noisy)[0]  # the pipeline's input conditioning (read noise can go negative)
    recentred = warp_stage(pcfg, frames, found, jnp.eye(2, dtype=jnp.float32))
    inputs = jax.vmap(lambda m: ellipse_network_input(pcfg, m))(recentred)
    return inputs, a.ellipse[0], a.ellipse[1]


def ellipse_targets(ratio: jax.Array, angle: jax.Array) -> jax.Array:
    """``(B,)`` ratio, angle -> ``(B, 3)`` = (cos 2 theta, sin 2 theta, ratio)."""
    return jnp.stack([jnp.cos(2 * angle), jnp.sin(2 * angle), ratio], -1)


def matrix_from_output(out: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``(..., 3)`` network output (cos 2t, sin 2t, ratio) -> ``(..., 2, 2)`` distortion ``D``.

    The same matrix as :func:`prenet_jax.conventions.ellipse_matrix` of
    ``(ratio, atan2(sin 2t, cos 2t) / 2)``, written without the arctangent:
    ``u u^T = (I + [[-c, s], [s, c]]) / 2`` in (row, col) order for the unit vector
    ``(c, s)``, so the gradient is finite everywhere (also at the untrained output (0, 0)).
    """
    n = jnp.sqrt(out[..., 0] ** 2 + out[..., 1] ** 2 + eps)
    c, s = out[..., 0] / n, out[..., 1] / n
    ratio = jnp.maximum(out[..., 2], 0.25)
    uu = 0.5 * jnp.stack([jnp.stack([1.0 - c, s], -1), jnp.stack([s, 1.0 + c], -1)], -2)
    eye = jnp.eye(2, dtype=out.dtype)
    r = jnp.sqrt(ratio)[..., None, None]
    return r * uu + (eye - uu) / r


def residual_ratio(d_pred: jax.Array, d_true: jax.Array) -> jax.Array:
    """Axis ratio of the ring left after correcting ``d_true`` with ``d_pred`` (1 = perfect).

    The corrected circle is ``M = D_pred^-1 D_true``; its axis ratio is the ratio of
    the singular values of ``M``.
    """
    m = jnp.linalg.solve(d_pred, d_true)
    sv = jnp.linalg.svd(m, compute_uv=False)
    return sv[..., 0] / sv[..., -1]


def _ellipse_metrics(out: jax.Array, ratio: jax.Array, angle: jax.Array) -> dict:
    from ...conventions import ellipse_matrix

    pred_angle = 0.5 * jnp.arctan2(out[:, 1], out[:, 0])
    dtheta = jnp.abs(jnp.angle(jnp.exp(2j * (pred_angle - angle)))) / 2
    # The angle of a near-circle is undefined: score it where the distortion is visible.
    w = (ratio > 1.02).astype(jnp.float32)
    return {
        "ratio_err": jnp.mean(jnp.abs(out[:, 2] - ratio)),
        "angle_err_deg": jnp.degrees(jnp.sum(w * dtheta) / jnp.maximum(w.sum(), 1.0)),
        "residual_ratio": jnp.mean(residual_ratio(matrix_from_output(out), ellipse_matrix(ratio, angle)) - 1.0),
    }


def ellipse_loss(
    cfg: PipelineConfig, lcfg: LossConfig, variables, inputs: jax.Array, ratio: jax.Array, angle: jax.Array, train: bool = True
):
    """``inputs (B, S, S)`` network inputs, true ``ratio, angle (B,)`` -> ``(loss, (metrics, batch_stats))``.

    With ``train`` the BatchNorm statistics of this (global) batch are used and the
    updated running averages returned; otherwise the running averages are used.
    Metrics: ``ratio_err`` (mean |error|), ``angle_err_deg`` (frames with ratio > 1.02),
    ``residual_ratio`` (mean axis ratio - 1 of the ring after correction).
    """
    net = ResNet(cfg.ellipse_net, dtype=network_dtype(cfg))
    if train:
        out, upd = net.apply(variables, inputs, train=True, mutable=["batch_stats"])
        stats = upd["batch_stats"]
    else:
        out, stats = net.apply(variables, inputs, train=False), variables.get("batch_stats")
    out = out.astype(jnp.float32)
    t = ellipse_targets(ratio, angle)
    loss = jnp.mean(jnp.sum(jnp.square(out[:, :2] - t[:, :2]), -1)) + lcfg.ratio_weight * jnp.mean(jnp.square(out[:, 2] - t[:, 2]))
    return loss, ({"loss": loss, **_ellipse_metrics(out, ratio, angle)}, stats)


def task_loss(cfg, pcfg: PipelineConfig, variables: dict, extra: dict, clean, zero, key, k_extra, train: bool):
    """``(loss, (metrics, extra))`` of one batch of clean patterns (the step's contract);
    training updates the ResNet's BatchNorm statistics in ``extra``."""
    net = ELLIPSE.network
    inputs, ratio, angle = ellipse_batch(key, clean, zero, cfg.augment, pcfg, cfg.ellipse_center_error)
    loss, (m, stats) = ellipse_loss(pcfg, cfg.loss, variables[net], inputs, ratio, angle, train=train)
    if train:
        extra = {**extra, net: {**extra[net], "batch_stats": stats}}
    return loss, (m, extra)
