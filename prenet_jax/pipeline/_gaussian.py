"""The classical denoiser: a Gaussian filter whose width follows each frame's dose.

A fixed sigma cannot be right for every dose: at a few counts per pixel a 2 px
blur gains 10 dB or more, at thousands of counts per pixel any blur erases more
signal (disk edges, Bragg spots) than noise, and a 1 px filter LOWERS the PSNR by
up to 30 dB. So the width is chosen per frame, inside the compiled step, from the
frame's peak ``p`` in electrons (the brightest pixel, which sets the Poisson noise
of the direct disk, where most of the signal is) and the radius ``q`` (px) of its
bright features (:func:`feature_size`: a small sharp disk tolerates less blur)::

    sigma = min(SIGMA_MAX, A * p ** -B * (q / 8) ** C),  no filter (0) where that is below SIGMA_MIN

The constants give the best mean gain under the constraint that no frame of two
measured sets of Poisson-noisy ``disk_pattern`` frames loses PSNR against the
noise-free truth: 432 cases of 64-256 px frames with disk radii 4-64 px and edges
0.4-1.5 px, and 1152 frames of small sharp disks (radii 2.5-6 px, edges 0.2-0.3 px),
each at 1e2 to 1e6 electrons per pattern. On a third, held-out set (972 cases:
other frame sizes, lattices, edges and ellipses) the rule gains 5.7 dB on average
and never loses; sigma = 1 px gains 3.2 on average and loses up to 32 dB.
``docs/preprocess.md`` gives the tables; ``tests/test_denoise_dose.py`` checks it.

Units. The rule reads ``p`` in counts (electrons). Integer-valued frames are taken
as counts. Other frames are brought to counts by their own noise: inside the bright
region (where a 5-point local mean reaches 70% of its maximum, less a pixel at the
border) the variance of the residual to the 4-neighbour mean is ``1.25 x`` for
Poisson counts ``x``, so ``g = var / (1.25 mean)`` is the size of one electron in
the frame's units, and ``p = peak / g``. Only ``g < 1`` is
used (data with less noise than counts: normalised, scaled down, or noise-free,
where ``g ~ 0`` and no filter is applied); ``g >= 1`` (detector units larger than
an electron, read noise, or structure in the bright region) keeps ``p = peak``,
which errs toward less filtering. ``PipelineConfig(gaussian_sigma=...)`` fixes the
width instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "SIGMA_RULE",
    "sigma_for",
    "feature_size",
    "electron_size",
    "equivalent_peak",
    "frame_sigma",
    "gaussian_per_frame",
    "dose_adaptive_gaussian",
]

#: ``A``, ``B``, ``C``, ``SIGMA_MAX``, ``SIGMA_MIN`` of the rule (module docstring).
SIGMA_RULE = {"A": 2.0, "B": 0.38, "C": 0.7, "SIGMA_MAX": 4.0, "SIGMA_MIN": 0.3}
#: Pixels of bright interior needed to measure the noise of non-integer frames.
MIN_INTERIOR = 25


def sigma_for(peak, size):
    """Filter width (px) for frames whose brightest pixel holds ``peak`` electrons and
    whose bright features have the radius ``size`` (px, :func:`feature_size`); works
    on numpy and jax arrays alike."""
    r = SIGMA_RULE
    p = jnp.maximum(jnp.asarray(peak, jnp.float32), 1.0)
    q = jnp.maximum(jnp.asarray(size, jnp.float32), 1.0)
    s = jnp.minimum(r["SIGMA_MAX"], r["A"] * p ** -r["B"] * (q / 8.0) ** r["C"])
    return jnp.where(s < r["SIGMA_MIN"], 0.0, s)


def feature_size(x: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames -> ``(B,)`` radius (px) of their bright features: twice the
    area over the boundary of the region where a 7x7 local mean reaches half its
    maximum (a disk of radius r gives about 1.14 r; several equal disks give the
    radius of one). The 7x7 mean keeps the region whole at low dose."""
    xp = jnp.pad(x, ((0, 0), (3, 3), (3, 3)), mode="edge")
    box = jax.lax.reduce_window(xp, 0.0, jax.lax.add, (1, 7, 7), (1, 1, 1), "VALID") / 49.0
    bright = box >= 0.5 * jnp.max(box, axis=(-2, -1), keepdims=True)
    bp = jnp.pad(bright, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    inner = bright & bp[:, :-2, 1:-1] & bp[:, 2:, 1:-1] & bp[:, 1:-1, :-2] & bp[:, 1:-1, 2:]
    area = bright.sum(axis=(-2, -1))
    boundary = (bright & ~inner).sum(axis=(-2, -1))
    return 2.0 * area / jnp.maximum(boundary, 1)


def electron_size(x: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames (finite, >= 0) -> ``(B,)`` the value of one electron in the
    frames' units, ``g`` of the module docstring, capped at 1 (at most: counts).

    Integer-valued frames are counts (or detector units of at least one count):
    ``g = 1``. Otherwise ``g`` comes from the interior of the bright region (a pixel
    whose 3x3 neighbourhood is all bright), where the 4-neighbour mean predicts a
    pixel without bias, with the median of the squared residual (divided by 0.455,
    the median of a chi-square with one degree of freedom) so that the few edge
    pixels left do not count. With fewer than ``MIN_INTERIOR`` such pixels the noise
    is not measured and ``g ~ 0``: no filter.
    """
    integral = jnp.all(x == jnp.round(x), axis=(-2, -1))
    # detector counts are integers: skip the measurement (a sort per frame) for such batches
    g = jax.lax.cond(jnp.all(integral), lambda y: jnp.ones(y.shape[0], y.dtype), _measured_electron_size, x)
    g = jnp.where(integral, 1.0, g)
    return jnp.clip(g, 1e-12, 1.0)


def _measured_electron_size(x: jax.Array) -> jax.Array:
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    neighbours = (xp[:, :-2, 1:-1] + xp[:, 2:, 1:-1] + xp[:, 1:-1, :-2] + xp[:, 1:-1, 2:]) / 4.0
    level = (4.0 * neighbours + x) / 5.0
    bright = level >= 0.7 * jnp.max(level, axis=(-2, -1), keepdims=True)
    bp = jnp.pad(bright, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    h, w = x.shape[-2:]
    interior = bright
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            interior = interior & bp[:, dr : dr + h, dc : dc + w]
    n = interior.sum(axis=(-2, -1))
    mean = jnp.where(interior, x, 0.0).sum(axis=(-2, -1)) / jnp.maximum(n, 1)
    resid2 = jnp.where(interior, (x - neighbours) ** 2, jnp.nan).reshape(x.shape[0], -1)
    var = jnp.nanmedian(resid2, axis=-1) / 0.455
    # too small a bright interior for a reliable median: no filter (g ~ 0), the safe side
    return jnp.where(n >= MIN_INTERIOR, var / jnp.maximum(1.25 * mean, 1e-30), 0.0)


def equivalent_peak(x: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames -> ``(B,)`` their peak in electrons (module docstring)."""
    return jnp.max(x, axis=(-2, -1)) / electron_size(x)


def frame_sigma(x: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames (finite, >= 0) -> ``(B,)`` the rule's sigma per frame."""
    return sigma_for(equivalent_peak(x), feature_size(x))


def _smoothing_matrices(n: int, sigma: jax.Array) -> jax.Array:
    """``(B,)`` sigmas -> ``(B, n, n)`` row-normalised Gaussian matrices (the same
    normalised convolution as :func:`prenet_jax.ops.gaussian_filter`, truncated at
    4 sigma). Sigma 0 gives the identity exactly."""
    i = jnp.arange(n, dtype=jnp.float32)
    d = i[:, None] - i[None, :]
    s = jnp.maximum(sigma, 1e-3)[:, None, None]  # 1e-3 px: the off-diagonal weights underflow to 0
    m = jnp.exp(-0.5 * (d / s) ** 2) * (jnp.abs(d) <= 4.0 * s)
    return m / m.sum(axis=-1, keepdims=True)


def gaussian_per_frame(x: jax.Array, sigma: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames, each blurred with its own ``sigma[b]`` px (traced: one
    compiled program for any mix of doses in a batch)."""
    h, w = x.shape[-2:]
    gh = _smoothing_matrices(h, sigma)
    gw = _smoothing_matrices(w, sigma)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("bij,bjk->bik", gh, x.astype(jnp.float32), precision=hi)
    return jnp.einsum("bik,blk->bil", y, gw, precision=hi)


def dose_adaptive_gaussian(x: jax.Array) -> jax.Array:
    """``(B, H, W)`` counts -> denoised counts, sigma chosen per frame by the rule."""
    return gaussian_per_frame(x, frame_sigma(x))
