"""Losses of the three networks and of the end-to-end chain (pure functions, float32).

Every loss runs the networks exactly as the pipeline does (the same normalisation,
padding, resizing and coordinate maps of :mod:`prenet_jax.pipeline._pipeline`), so what is
trained is what is deployed. Each returns ``(loss, metrics)`` with ``metrics`` a dict
of scalars (batch means).

- Denoiser: mean squared error in the network's own output space, the transform
  ``t(I / max(noisy))`` of :func:`prenet_jax.pipeline._pipeline.normalize` (``sqrt`` by default).
  The square root is variance-stabilising for Poisson counts, so every pixel's error
  counts about equally whatever its intensity; the linear space lets the direct disk
  (up to 10^3 x the Bragg disks) dominate. docs/training.md gives the measured numbers.
- Centre: binary cross-entropy of the heatmap logits against a Gaussian of
  ``heatmap_sigma`` px at the true centre (at network resolution), plus a Huber loss
  on the coordinate :func:`prenet_jax.ops._centers.heatmap_center` extracts, in px: the
  heatmap teaches where, the coordinate term removes the sub-pixel bias the
  thresholded centroid would otherwise keep.
- Ellipse: squared error of ``(cos 2 theta, sin 2 theta)`` plus ``ratio_weight`` x
  squared error of the ratio.
- End to end: the corrected frames against the ideal ones (centred, undistorted,
  noise-free) in the same sqrt space, plus a Huber loss on the centres.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ..config import PipelineConfig
from ..models import ResNet, UNet
from ..ops import heatmap_center, resize, resize_coordinates
from ..pipeline import (
    as_counts,
    center_fine_stage,
    center_stage,
    crop_frames,
    crop_origin,
    denoise_normalized,
    denoise_stage,
    ellipse_network_input,
    network_dtype,
    normalize,
    warp_stage,
)
from ..stages import CENTER, DENOISE, ELLIPSE

__all__ = [
    "LossConfig",
    "transform",
    "sample_crops",
    "denoiser_loss",
    "denoise_metrics",
    "gaussian_heatmap",
    "center_loss",
    "ellipse_targets",
    "matrix_from_output",
    "residual_ratio",
    "ellipse_loss",
    "e2e_forward",
    "e2e_loss",
]

#: The centre stage's coarse and fine networks.
_COARSE, _FINE = CENTER.keys


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and widths of the losses.

    Attributes
    ----------
    heatmap_sigma : standard deviation (network px) of the Gaussian heatmap target.
    heatmap_weight, coord_weight : weights of the heatmap BCE and of the coordinate Huber loss.
    huber_delta : px where the coordinate (and end-to-end centre) loss turns from
        quadratic to linear (outliers early in training do not dominate).
    ratio_weight : weight of the squared ratio error against the (cos 2t, sin 2t) error
        (ratios vary by ~0.1, the unit vector by ~1).
    e2e_image_weight, e2e_center_weight, e2e_ellipse_weight : end-to-end terms; the
        ellipse term (on the network output) is off by default: the ellipse network is
        taught by the corrected frames alone.
    sqrt_eps : added inside the square root of the end-to-end image loss (a finite
        gradient at zero intensity).
    denoise_loss : ``"mse"``: the squared error in the network's space; ``"relative"``:
        each frame's squared error divided by that of its noisy input in the same
        space, so every dose counts alike (a plain MSE is dominated by the noisiest,
        lowest-dose frames and teaches the network to smooth the clean ones).
    fine_offset : centre task with a fine network: the fine crop is centred on the
        true centre plus a Gaussian error of this many px per axis (what the coarse
        pass leaves), so the fine network learns to find the centre anywhere near
        the middle of its crop.
    fine_weight : weight of the fine pass's loss against the coarse pass's.
    """

    heatmap_sigma: float = 2.0
    heatmap_weight: float = 1.0
    coord_weight: float = 0.1
    huber_delta: float = 1.0
    ratio_weight: float = 100.0
    e2e_image_weight: float = 1.0
    e2e_center_weight: float = 0.03
    e2e_ellipse_weight: float = 0.0
    sqrt_eps: float = 1e-4
    denoise_loss: str = "mse"
    fine_offset: float = 2.0
    fine_weight: float = 1.0

    def __post_init__(self):
        if self.denoise_loss not in ("mse", "relative"):
            raise ValueError(f"denoise_loss={self.denoise_loss!r}: use 'mse' or 'relative'")


def transform(t: jax.Array, kind: str) -> jax.Array:
    """The pipeline's intensity transform of max-scaled intensities ``t`` in [0, 1]."""
    return jnp.sqrt(t) if kind == "sqrt" else t


def _huber(err: jax.Array, delta: float) -> jax.Array:
    return optax.huber_loss(err, delta=delta) / delta  # ~|err| for large errors, err^2/(2 delta) small


def _psnr(err_sq_mean: jax.Array, peak: jax.Array) -> jax.Array:
    return 10.0 * jnp.log10(peak**2 / jnp.maximum(err_sq_mean, 1e-30))


# ----------------------------------------------------------------------------- denoiser


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


# ----------------------------------------------------------------------------- centre


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


# ----------------------------------------------------------------------------- ellipse


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
    from ..conventions import ellipse_matrix

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


# ----------------------------------------------------------------------------- end to end


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
