"""The denoiser task (``task="denoiser"``): its batch, loss and metrics.

The batch is the augmented detector frames and their noise-free expectation; the loss
is the mean squared error in the network's own output space, the transform
``t(I / max(noisy))`` of :func:`prenet_jax.pipeline.normalize` (``sqrt`` by default),
optionally on crops weighted towards the pattern's signal. The validation metric is
the PSNR against the expectation (:data:`prenet_jax.stages.DENOISE`.metric).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ...config import PipelineConfig
from ...corruption import AugmentConfig, augment
from ...pipeline import (
    as_counts,
    denoise_normalized,
    normalize,
)
from ...stages import DENOISE
from .._losses import LossConfig, _psnr, transform

__all__ = ["task_loss", "denoiser_batch", "sample_crops", "denoiser_loss", "denoise_metrics"]


def denoiser_batch(key: jax.Array, clean: jax.Array, zero: jax.Array, aug: AugmentConfig):
    """``(noisy, target)``, both ``(B, H, W)`` detector counts."""
    a = augment(key, clean, zero, aug)
    return a.noisy, a.target


def sample_crops(key: jax.Array, weights: jax.Array, size: int, per_frame: int) -> jax.Array:
    """``(B, per_frame, 2)`` integer origins of ``size`` crops inside ``(B, H, W)`` frames.

    Half the crops are centred on a pixel drawn with probability proportional to
    ``weights`` (where the signal is: disks and rings), half uniformly (the dark
    background, where a denoiser must not invent structure).
    """
    b, h, w = weights.shape
    k_sig, k_uni, k_pick = jax.random.split(key, 3)
    logits = jnp.log(jnp.maximum(weights.reshape(b, h * w), 0.0) + 1e-12)
    at_signal = jax.random.categorical(k_sig, logits[:, None, :], axis=-1, shape=(b, per_frame))
    anywhere = jax.random.randint(k_uni, (b, per_frame), 0, h * w)
    idx = jnp.where(jax.random.bernoulli(k_pick, 0.5, (b, per_frame)), at_signal, anywhere)
    center = jnp.stack([idx // w, idx % w], -1)
    return jnp.clip(center - size // 2, 0, jnp.asarray([h - size, w - size]))


def _take_crops(frames: jax.Array, origins: jax.Array, size: int) -> jax.Array:
    """``(B, H, W)`` frames, ``(B, K, 2)`` origins -> ``(B, K, size, size)``."""
    one = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1]), (size, size))  # noqa: E731
    return jax.vmap(lambda im, os: jax.vmap(lambda o: one(im, o))(os))(frames, origins)


def denoiser_loss(
    cfg: PipelineConfig,
    lcfg: LossConfig,
    variables,
    noisy: jax.Array,
    target: jax.Array,
    key: jax.Array | None = None,
    crop: int | None = None,
    crops_per_frame: int = 1,
):
    """``noisy, target (B, H, W)`` counts -> ``(loss, metrics)``.

    The frames are normalised whole, as the pipeline does (the scale is the *noisy*
    frame's maximum, the only one known at inference); with ``crop`` the network then
    sees ``crops_per_frame`` crops of each (:func:`sample_crops`, from ``key``): it is
    fully convolutional, so it trains on crops and runs on whole frames. The target
    in the network's space is ``t(target / scale)``, clipped to [0, 1] for a sigmoid
    output. Metrics (on what the network saw): ``psnr`` in dB of the de-normalised
    output against the target in counts, peak = the target's maximum; ``psnr_gain``
    over the noisy input; ``psnr_sqrt``; ``weak_rel_err``.
    """
    noisy = as_counts(noisy)[0]  # the pipeline's input conditioning: read noise can go negative
    xn, scale = normalize(noisy, cfg.transform)
    t = target / scale
    t = transform(jnp.clip(t, 0.0, None if cfg.denoise_residual else 1.0), cfg.transform)
    # The noise power of each whole frame in the network's space: the yardstick of "relative".
    noise = jnp.mean(jnp.square(xn - t), axis=(-2, -1))
    if crop is not None:
        origins = sample_crops(key, t, crop, crops_per_frame)
        xn_c, t_c = (_take_crops(a, origins, crop) for a in (xn, t))
        tgt_c, noisy_c = (_take_crops(a, origins, crop) for a in (target, noisy))
        b = xn.shape[0] * crops_per_frame
        xn, t, target, noisy = (a.reshape(b, crop, crop) for a in (xn_c, t_c, tgt_c, noisy_c))
        scale = jnp.repeat(scale, crops_per_frame, axis=0)
        noise = jnp.repeat(noise, crops_per_frame, axis=0)
    y = denoise_normalized(cfg, {DENOISE.network: variables}, xn)
    err = jnp.mean(jnp.square(y - t), axis=(-2, -1))
    if lcfg.denoise_loss == "relative":
        loss = jnp.mean(err / jnp.maximum(noise, 1e-12))
    else:
        loss = jnp.mean(err)
    y = jnp.maximum(y, 0.0)
    out = (jnp.square(y) if cfg.transform == "sqrt" else y) * scale
    return loss, {"loss": loss, "mse": jnp.mean(err), **denoise_metrics(out, noisy, target)}


def denoise_metrics(out: jax.Array, noisy: jax.Array, target: jax.Array) -> dict:
    """Scores of a denoised ``out`` against the noise-free ``target`` (both ``(B, H, W)`` counts).

    ``psnr``: dB, peak = the target's maximum (per frame, averaged); dominated by the
    bright direct disk. ``psnr_gain``: ``psnr`` minus that of the noisy input.
    ``psnr_sqrt``: dB in the square-root space of each target's maximum (weak and bright
    features weigh alike). ``weak_rel_err``: relative L2 error over the pixels whose
    target is 0.5-30 % of the maximum (Bragg disks, diffuse rings).
    """
    peak = jnp.max(target, axis=(-2, -1))
    m = jnp.where(peak > 0, peak, 1.0)[:, None, None]
    psnr = jnp.mean(_psnr(jnp.mean(jnp.square(out - target), axis=(-2, -1)), peak))
    psnr_in = jnp.mean(_psnr(jnp.mean(jnp.square(noisy - target), axis=(-2, -1)), peak))
    sq = jnp.mean(jnp.square(jnp.sqrt(jax.nn.relu(out) / m) - jnp.sqrt(target / m)), axis=(-2, -1))
    weak = ((target >= 0.005 * m) & (target <= 0.3 * m)).astype(jnp.float32)
    rel = jnp.sqrt(
        jnp.sum(weak * jnp.square(out - target), axis=(-2, -1)) / jnp.maximum(jnp.sum(weak * jnp.square(target), axis=(-2, -1)), 1e-30)
    )
    return {"psnr": psnr, "psnr_gain": psnr - psnr_in, "psnr_sqrt": jnp.mean(_psnr(sq, jnp.ones_like(sq))), "weak_rel_err": jnp.mean(rel)}


def task_loss(cfg, pcfg: PipelineConfig, variables: dict, extra: dict, clean, zero, key, k_extra, train: bool):
    """``(loss, (metrics, extra))`` of one batch of clean patterns (the step's contract)."""
    noisy, target = denoiser_batch(key, clean, zero, cfg.augment)
    loss, m = denoiser_loss(pcfg, cfg.loss, variables[DENOISE.network], noisy, target, k_extra, cfg.crop_size, cfg.crops_per_frame)
    return loss, (m, extra)
