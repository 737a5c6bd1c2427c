"""The stage functions: pure functions of ``(config, params, batch)``.

Each is traced inside the jitted steps of :class:`prenet_jax.pipeline.Pipeline`, and the
same functions run in training (:mod:`prenet_jax.training`) and in the file path
(:mod:`prenet_jax.preprocess`): as_counts -> normalise -> denoise -> centre (networks,
consensus, refinement) -> one composed warp; the ellipse stage reads the recentred mean
pattern and the coverage of its pixels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..config import PipelineConfig
from ..conventions import FLAG_EMPTY, FLAG_NEGATIVE, FLAG_NONFINITE, FLAG_REFINE
from ..models import ResNet, UNet
from ..ops import (
    com_center,
    fill_masked,
    fit_ellipse_edge,
    frame_center,
    friedel_center,
    gaussian_filter,
    heatmap_center,
    polar_transform,
    recenter_and_correct,
    refine_center,
    resize,
    resize_coordinates,
)
from ._gaussian import dose_adaptive_gaussian


def frame_counts(frames: np.ndarray) -> np.ndarray:
    """Total counts of each frame as the step sees them (negatives and NaN/Inf as 0)."""
    x = np.asarray(frames, np.float64)
    return np.where(np.isfinite(x) & (x > 0), x, 0.0).sum(axis=(1, 2))


# ----------------------------------------------------------------------------- stages
# Pure functions of (config, params, batch); composed into the jitted steps below.


def as_counts(frames: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The input conditioning of every stage: ``(B, H, W)`` frames of any real dtype ->
    float32 counts (cast on the device; NaN/Inf and negative pixels set to 0) and the
    per-frame flags (``FLAG_NONFINITE``, ``FLAG_EMPTY``, ``FLAG_NEGATIVE``).

    ``valid`` (H, W), 1 = good, 0 = masked: masked pixels are set to 0 and set no flag
    (a dead pixel that reads NaN, a hot one, a beam stop's shadow)."""
    x = frames.astype(jnp.float32)
    ok = jnp.isfinite(x)
    x = jnp.where(ok, x, 0.0)
    if valid is not None:
        ok = ok | (valid < 0.5)
        x = x * valid
    negative = (x < 0).any(axis=(-2, -1))
    x = jnp.maximum(x, 0.0)
    flags = jnp.where(ok.all(axis=(-2, -1)), 0, FLAG_NONFINITE)
    flags = flags | jnp.where(x.sum(axis=(-2, -1)) > 0, 0, FLAG_EMPTY) | jnp.where(negative, FLAG_NEGATIVE, 0)
    return x, flags.astype(jnp.uint8)


@jax.custom_jvp
def _sqrt(t: jax.Array) -> jax.Array:
    """``sqrt`` whose derivative is capped below ``t = 1e-6`` (a millionth of the frame
    maximum): the exact one is infinite at the empty pixels every pattern has, which
    turns end-to-end gradients into NaN. The value is ``jnp.sqrt`` exactly."""
    return jnp.sqrt(t)


@_sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    (t,), (dt,) = primals, tangents
    return jnp.sqrt(t), dt * 0.5 * jax.lax.rsqrt(jnp.maximum(t, 1e-6))


def normalize(x: jax.Array, transform: str) -> tuple[jax.Array, jax.Array]:
    """``(B, H, W)`` counts -> values in [0, 1] and the per-frame scale (the maximum)."""
    scale = jnp.max(x, axis=(-2, -1), keepdims=True)
    scale = jnp.where(scale > 0, scale, 1.0)
    t = x / scale
    return (_sqrt(t) if transform == "sqrt" else t), scale


def denormalize(y: jax.Array, scale: jax.Array, transform: str) -> jax.Array:
    """Inverse of :func:`normalize`: back to the input's intensity units."""
    return (jnp.square(y) if transform == "sqrt" else y) * scale


def network_dtype(cfg: PipelineConfig):
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def _pad_to_multiple(x: jax.Array, m: int) -> jax.Array:
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw))) if (ph or pw) else x


def denoiser_module(cfg: PipelineConfig) -> UNet:
    """The denoiser: sigmoid output of the clean frame, or (``denoise_residual``) an
    unbounded correction added to its input, zero at initialisation."""
    return UNet(cfg.denoiser, sigmoid=not cfg.denoise_residual, zero_head=cfg.denoise_residual, dtype=network_dtype(cfg))


def denoise_normalized(cfg: PipelineConfig, params, xn: jax.Array) -> jax.Array:
    """The denoiser on normalised frames ``(B, H, W)`` (any size: padded to a multiple of
    ``2**depth``), returning the estimate in the same normalised space."""
    h, w = xn.shape[-2:]
    y = denoiser_module(cfg).apply(params["denoiser"], _pad_to_multiple(xn, 2**cfg.denoiser.depth))[:, :h, :w].astype(jnp.float32)
    return xn + y if cfg.denoise_residual else y


def denoise_stage(cfg: PipelineConfig, params, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """``(B, H, W)`` counts -> denoised counts. The U-Net is fully convolutional and runs
    at the native resolution (padded to a multiple of ``2**depth``), so no detail is
    lost to resampling. With ``valid`` (1 = good, 0 = masked) the masked pixels are
    first filled from their neighbours (:func:`prenet_jax.ops.fill_masked`): the
    denoiser never sees a dead 0 or a hot spike, and neither does the output."""
    if valid is not None:
        x = fill_masked(x, valid)
    if cfg.denoise_method in ("none", "scan"):  # "scan": denoised before the step, with the scan
        return x
    if cfg.denoise_method == "gaussian":
        if cfg.gaussian_sigma is None:  # per frame from its counts; no filter where none helps
            return dose_adaptive_gaussian(x)
        return gaussian_filter(x, cfg.gaussian_sigma)
    xn, scale = normalize(x, cfg.transform)
    # A residual estimate can leave [0, 1]; intensities cannot be negative.
    y = jnp.maximum(denoise_normalized(cfg, params, xn), 0.0)
    return denormalize(y, scale, cfg.transform)


def _heatmap_centers(cfg: PipelineConfig, heat: jax.Array) -> jax.Array:
    fn = functools.partial(heatmap_center, threshold=cfg.heatmap_threshold, radius=cfg.heatmap_radius)
    return jax.vmap(fn)(heat)


def center_heatmap(cfg: PipelineConfig, params, x: jax.Array) -> jax.Array:
    """``(B, H, W)`` counts -> ``(B, S, S)`` heatmap of the (coarse) centre network at its
    resolution ``S = image_size``."""
    xn, _ = normalize(x, cfg.transform)
    xs = resize(xn, (cfg.image_size, cfg.image_size))
    return UNet(cfg.center_net, sigmoid=True, dtype=network_dtype(cfg)).apply(params["center_net"], xs).astype(jnp.float32)


def crop_origin(center: jax.Array, size: int) -> jax.Array:
    """``(..., 2)`` centres -> integer ``(row, col)`` of the top-left pixel of the
    ``size`` x ``size`` crop centred on them (to the nearest pixel: no resampling)."""
    return jnp.round(center - (size - 1) / 2.0).astype(jnp.int32)


def crop_frames(xn: jax.Array, origin: jax.Array, size: int) -> jax.Array:
    """``(B, H, W)`` frames, ``(B, 2)`` integer origins -> ``(B, size, size)`` crops;
    outside the frame reads as zero."""
    h, w = xn.shape[-2:]
    padded = jnp.pad(xn, ((0, 0), (size, size), (size, size)))
    o = jnp.clip(origin, -size, jnp.asarray([h, w])) + size
    return jax.vmap(lambda im, oo: jax.lax.dynamic_slice(im, (oo[0], oo[1]), (size, size)))(padded, o)


def center_fine_stage(cfg: PipelineConfig, params, xn: jax.Array, coarse: jax.Array) -> jax.Array:
    """The fine pass: ``fine_size`` crops of the normalised native frames ``xn`` around the
    ``coarse`` centres -> ``(B, 2)`` sub-pixel centres in native pixels."""
    origin = crop_origin(coarse, cfg.fine_size)
    crops = crop_frames(xn, origin, cfg.fine_size)
    heat = UNet(cfg.center_fine, sigmoid=True, dtype=network_dtype(cfg)).apply(params["center_fine"], crops).astype(jnp.float32)
    return origin.astype(jnp.float32) + _heatmap_centers(cfg, heat)


def center_stage(cfg: PipelineConfig, params, x: jax.Array, valid: jax.Array | None = None, raw: jax.Array | None = None) -> jax.Array:
    """``(B, H, W)`` counts -> ``(B, 2)`` centres ``(row, col)`` in native pixels. With
    ``valid`` (1 = good, 0 = masked) the centre of mass and Friedel symmetry count only
    the pixels whose mirror image is also seen (their ``valid=``); the networks see the
    frames as filled by :func:`denoise_stage`.

    ``raw``: the counts before the denoise stage (default ``x``), which the consensus
    (``center_consensus``) reads: on 2,048 held-out patterns the consensus on the raw
    counts within 0.5 px beat the one on the Gaussian-filtered frames within 1 px in
    every cell but crystals at 1e3 electrons (``benchmarks/EVAL.md``, section 6)."""
    shape = x.shape[-2:]
    if cfg.center_method == "none":
        return jnp.broadcast_to(jnp.asarray(frame_center(shape), jnp.float32), (x.shape[0], 2))
    if cfg.center_method in ("com", "friedel"):
        return _classical_centers(cfg, cfg.center_method, x, valid)
    s = cfg.image_size
    found = resize_coordinates(_heatmap_centers(cfg, center_heatmap(cfg, params, x)), (s, s), shape)
    if cfg.center_fine is not None:
        xn, _ = normalize(x, cfg.transform)
        found = center_fine_stage(cfg, params, xn, found)
    if cfg.center_consensus == "none":
        return found
    classical = _classical_centers(cfg, cfg.center_consensus, x if raw is None else raw, valid)
    agree = jnp.linalg.norm(classical - found, axis=-1, keepdims=True) < cfg.consensus_px
    return jnp.where(agree, classical, found)


def _classical_centers(cfg: PipelineConfig, method: str, x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """``(B, 2)`` centres of ``x`` by the thresholded centre of mass or Friedel symmetry."""
    if method == "com":
        return jax.vmap(functools.partial(com_center, threshold=cfg.com_threshold, valid=valid))(x)
    return jax.vmap(functools.partial(friedel_center, valid=valid))(x)


#: What ``refine=`` may name: the beam centres, the ellipse, or both.
REFINE_TARGETS = ("centers", "ellipse")


def refine_targets(refine: bool | str | None) -> frozenset[str]:
    """``refine=`` of :meth:`Pipeline.preprocess` and ``preprocess_file`` as the set of
    what is refined: True or ``"all"`` both, ``"centers"`` or ``"ellipse"`` one, False,
    None or ``"none"`` nothing. Centres only is the choice where the ellipse's refinement
    does not pay (``benchmarks/EVAL.md``, section 5)."""
    if refine is True or refine == "all":
        return frozenset(REFINE_TARGETS)
    if refine is None or refine is False or refine == "none":
        return frozenset()
    if refine in REFINE_TARGETS:
        return frozenset([refine])
    raise ValueError(f"refine={refine!r}: use True/'all', 'centers', 'ellipse' or False/'none'")


def refine_stage(
    cfg: PipelineConfig, x: jax.Array, centers: jax.Array, flags: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``center_refine="friedel"``: every centre refined by Friedel symmetry
    (:func:`prenet_jax.ops.refine_center`, masked pixels and their mirrors left out); a
    failed refinement keeps the estimate and sets ``FLAG_REFINE`` (empty frames, which
    have nothing to refine, are not flagged)."""
    if cfg.center_refine == "none":
        return centers, flags
    fn = functools.partial(refine_center, window=cfg.refine_window, steps=cfg.refine_steps, valid=valid)
    refined, ok = jax.vmap(fn)(x, centers)
    failed = ~ok & ((flags & FLAG_EMPTY) == 0)
    return refined, flags | jnp.where(failed, FLAG_REFINE, 0).astype(flags.dtype)


def warp_stage(cfg: PipelineConfig, x: jax.Array, centers: jax.Array, matrix: jax.Array) -> jax.Array:
    """One resampling per frame: recentre and undo the ellipse."""
    fn = functools.partial(recenter_and_correct, method=cfg.interpolation)
    return jax.vmap(fn, in_axes=(0, 0, None))(x, centers, matrix)


def moved_valid_sum(method: str, valid: jax.Array, centers: jax.Array, weights: jax.Array, matrix: jax.Array) -> jax.Array:
    """``sum_i w_i (valid warped as frame i)``: how often each pixel of the corrected
    frames was seen (a detector mask moves with every frame's centre); ``method`` the
    warp's interpolation."""
    fn = functools.partial(recenter_and_correct, method=method)
    moved = jax.vmap(fn, in_axes=(None, 0, None))(valid, centers, matrix)
    return jnp.einsum("b,bhw->hw", weights, moved, precision=jax.lax.Precision.HIGHEST)


_moved_valid_sum = jax.jit(moved_valid_sum, static_argnums=0)


def frame_seen_sum(centers: jax.Array, weights: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """``sum_i w_i [pixel inside frame i once recentred]``: how often each pixel of the
    recentred frames (no ellipse undone) came from inside the detector. A disk cut off by
    the frame's edge is filled with zeros beyond it, whose straight edge is no disk edge;
    the ellipse estimate leaves out what this says was never seen. The recentring moves
    rows and columns separately, so the sum is a product of two 1-D indicators per frame
    (no warp)."""
    h, w = shape
    c0 = frame_center(shape)
    rows = jnp.arange(h, dtype=jnp.float32)[None, :] + (centers[:, 0:1] - c0[0])
    cols = jnp.arange(w, dtype=jnp.float32)[None, :] + (centers[:, 1:2] - c0[1])
    in_r = ((rows >= 0.0) & (rows <= h - 1.0)).astype(jnp.float32)
    in_c = ((cols >= 0.0) & (cols <= w - 1.0)).astype(jnp.float32)
    return jnp.einsum("b,bh,bw->hw", weights, in_r, in_c, precision=jax.lax.Precision.HIGHEST)


_frame_seen_sum = jax.jit(frame_seen_sum, static_argnums=2)

#: Without a mask, a pixel of the recentred mean counts as seen where at least this share
#: of its frames held it. A pixel that only some frames held is darker, but smoothly so
#: (the frames' shifts differ): no edge. Only where most frames were beyond the frame's
#: edge is there a zero fill with a straight edge (a disk cut off by the detector). With
#: the 0.99 of a mask's coverage, the evaluation's means of frames shifted by up to 16 px
#: in 32 px frames lost their harmonic ellipse estimate (ratio error 0.016 against 0.0005).
FRAME_SEEN_SHARE = 0.5


def _frame_seen(share: np.ndarray) -> np.ndarray:
    """The frame-edge coverage as the ellipse fits read it: seen (1) or not (0)."""
    return (np.asarray(share) >= FRAME_SEEN_SHARE).astype(np.float32)


def _polar_channels(cfg: PipelineConfig, pn: jax.Array) -> jax.Array:
    """``(A, R)`` polar transform (normalised) -> ``(A, R, 4)``: the transform, its
    azimuthal residual (rescaled to the range of the transform), ``cos 2 phi`` and
    ``sin 2 phi``. The residual holds the ellipse's signal; the coordinates let a
    network with global pooling tell its direction."""
    a = pn.shape[0]
    resid = pn - pn.mean(axis=0, keepdims=True)
    resid = resid / jnp.maximum(jnp.max(jnp.abs(resid)), 1e-6)
    phi = 2 * jnp.pi * jnp.arange(a, dtype=jnp.float32) / a
    cos2 = jnp.broadcast_to(jnp.cos(2 * phi)[:, None], pn.shape)
    sin2 = jnp.broadcast_to(jnp.sin(2 * phi)[:, None], pn.shape)
    return jnp.stack([pn, resid, cos2, sin2], -1)


def ellipse_network_input(cfg: PipelineConfig, mean_pattern: jax.Array) -> jax.Array:
    """``(H, W)`` recentred mean -> the ellipse network's input: ``(S, S)`` for
    ``ellipse_input="image"``, ``(polar_angles, polar_radii, 4)`` for ``"polar"``.

    Non-square frames are centre-cropped to a square first: an anisotropic resize
    would itself distort the ellipse.
    """
    h, w = mean_pattern.shape
    n = min(h, w)
    r0, c0 = (h - n) // 2, (w - n) // 2
    sq = mean_pattern[r0 : r0 + n, c0 : c0 + n]
    xn, _ = normalize(sq[None], cfg.transform)
    if cfg.ellipse_input == "polar":
        # Radii in native pixels (1 px apart), whatever the frame size: the network sees
        # the same scale on any detector; outside the frame reads as zero.
        pn = polar_transform(xn[0], None, cfg.polar_angles, cfg.polar_radii, float(cfg.polar_radii - 1))
        return _polar_channels(cfg, pn)
    return resize(xn, (cfg.image_size, cfg.image_size))[0]


def ellipse_stage(cfg: PipelineConfig, params, mean_pattern: jax.Array, coverage: jax.Array | None = None) -> jax.Array:
    """``(H, W)`` recentred mean pattern -> ``(3,)`` = ``(ratio, angle, ok)``. ``coverage``
    (a masked detector's, see :func:`prenet_jax.ops.fit_ellipse_edge`) keeps the edge fit
    off the masked azimuths; the network sees the mean as filled."""
    if cfg.ellipse_method == "fit":
        fit = fit_ellipse_edge(mean_pattern, coverage=coverage)
        ok = jnp.isfinite(fit["a"]) & jnp.isfinite(fit["b"]) & (fit["b"] > 0)
        return jnp.stack([fit["a"] / fit["b"], fit["angle"], ok.astype(jnp.float32)])
    out = ResNet(cfg.ellipse_net, dtype=network_dtype(cfg)).apply(
        params["ellipse_net"], ellipse_network_input(cfg, mean_pattern)[None], train=False
    )[0]
    angle = jnp.mod(0.5 * jnp.arctan2(out[1], out[0]), jnp.pi)
    return jnp.stack([out[2], angle, jnp.float32(1.0)])


def init_network_params(key: jax.Array, cfg: PipelineConfig) -> dict:
    s = cfg.image_size
    x = jnp.zeros((1, s, s), jnp.float32)
    k1, k2, k3 = jax.random.split(key, 3)
    k4 = jax.random.fold_in(key, 3)
    params = {}
    if cfg.denoise_method == "network":
        params["denoiser"] = denoiser_module(cfg.replace(compute_dtype="float32")).init(k1, x)
    if cfg.center_method == "network":
        params["center_net"] = UNet(cfg.center_net, sigmoid=True).init(k2, x)
        if cfg.center_fine is not None:
            params["center_fine"] = UNet(cfg.center_fine, sigmoid=True).init(k4, jnp.zeros((1, cfg.fine_size, cfg.fine_size), jnp.float32))
    if cfg.ellipse_method == "network":
        e = ellipse_network_input(cfg, jnp.zeros((max(s, 16), max(s, 16)), jnp.float32))
        params["ellipse_net"] = ResNet(cfg.ellipse_net).init(k3, e[None], train=False)
    return params
