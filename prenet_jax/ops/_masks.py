"""Detector masks: pixels that carry no information (dead and hot pixels, panel gaps,
a beam stop's shadow).

The user-facing mask is boolean, ``True`` = bad (as py4DSTEM's and pyxem's masks).
Inside the compiled functions it is ``valid``: float32 ``(H, W)``, 1 = good, 0 = bad,
so that it can be resampled (its 180° rotation about a sub-pixel centre).

Why a mirrored mask: a centre estimator that relies on symmetry (the centre of mass
of a centrosymmetric disk, Friedel symmetry) is biased by any missing part of the
pattern, because the part's mirror image still counts. Weighting each pixel by
``valid(p) * valid(2c - p)`` drops every pixel whose mirror is missing too: what is
left is symmetric about the true centre, and the estimate is unbiased again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._filters import gaussian_filter

__all__ = ["fill_masked", "mirrored_valid", "detect_bad_pixels", "pixel_sums"]


def fill_masked(frames: jax.Array, valid: jax.Array, sigma: float = 1.5) -> jax.Array:
    """Masked pixels of ``(..., H, W)`` frames replaced by a Gaussian-weighted mean of
    their valid neighbours (normalised convolution); 0 where no valid pixel lies within
    a few ``sigma``. What the networks and the Gaussian denoiser see: a plausible value,
    not a dead 0 or a hot spike. A frame of whole counts stays whole (its filled values
    are rounded): the dose-adaptive Gaussian reads whole numbers as counts, and a
    fractional fill would make it measure the frame's units instead (and cost a sort)."""
    v = jnp.asarray(valid, jnp.float32)
    x = jnp.asarray(frames, jnp.float32)
    num = gaussian_filter(x * v, sigma)
    den = gaussian_filter(jnp.broadcast_to(v, x.shape[-2:])[None], sigma)[0]
    filled = jnp.where(den > 1e-3, num / jnp.maximum(den, 1e-3), 0.0)
    counts = jnp.all((x == jnp.round(x)) | (v < 0.5), axis=(-2, -1), keepdims=True)
    return jnp.where(v > 0.5, x, jnp.where(counts, jnp.round(filled), filled))


def mirrored_valid(valid: jax.Array, center: jax.Array) -> jax.Array:
    """``valid(2 c - p)`` at every pixel ``p`` (bilinear): the mask rotated by 180° about
    ``center``. Outside the frame it reads 1: no pixel there to distrust (an unmasked
    frame's estimators use such pixels too)."""
    v = jnp.asarray(valid, jnp.float32)
    h, w = v.shape
    r = 2.0 * center[0] - jnp.arange(h, dtype=jnp.float32)
    c = 2.0 * center[1] - jnp.arange(w, dtype=jnp.float32)
    rr, cc = jnp.meshgrid(r, c, indexing="ij")
    return jax.scipy.ndimage.map_coordinates(v, [rr, cc], order=1, mode="constant", cval=1.0)


def _neighbours(img: np.ndarray) -> np.ndarray:
    """The 8 neighbours of every pixel, sorted: (8, H, W) (edges replicated)."""
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    return np.sort(np.stack([p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]), axis=0)


def pixel_sums(frames) -> np.ndarray:
    """``(N, H, W)`` -> ``(H, W)`` float64 sum over the frames of the counts (negatives and
    NaN/Inf as 0), without a float64 copy of the stack."""
    total = np.zeros(np.shape(frames)[1:], np.float64)
    for f in frames:
        f = np.asarray(f, np.float64)
        total += np.where(np.isfinite(f) & (f > 0), f, 0.0)
    return total


def detect_bad_pixels(frames, *, hot_ratio: float = 5.0, significance: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Hot and dead pixels from a stack of frames sampled across a scan.

    Both are judged against the pixel's 8 neighbours in the mean of the stack (a
    healthy pixel's sum ``S`` over ``N`` frames is Poisson with about its neighbours'
    mean ``N m``):

    - **hot**: ``S`` is over ``hot_ratio`` times ``N m2`` and over ``significance``
      Poisson standard deviations above it (``(S - N m2) / sqrt(N m2 + 1)``), with ``m2``
      the second brightest neighbour. An edge pixel of a disk or a Bragg spot has
      neighbours as bright as itself on the inside (a pixel sticking out of an edge has
      at least two); a hot pixel, or two side by side, has none.
    - **dead**: no count in any frame, where the neighbours' median ``m`` predicts
      ``N m > significance^2 / 4`` counts (25 for the default: probability
      ``exp(-25)`` of none by chance).

    Parameters
    ----------
    frames : (N, H, W) counts (negatives and NaN/Inf are read as 0), or their sum
        over the frames, (H, W) (what a caller reading them in pieces accumulates)
    hot_ratio, significance : the thresholds above

    Returns
    -------
    (hot, dead): (H, W) bool each
    """
    x = np.asarray(frames)
    total = pixel_sums(x) if x.ndim == 3 else x.astype(np.float64)
    nb = _neighbours(total)
    second, median = nb[-2], 0.5 * (nb[3] + nb[4])
    hot = (total > hot_ratio * second) & ((total - second) / np.sqrt(second + 1.0) > significance)
    dead = (total == 0) & (median > significance**2 / 4.0)
    return hot, dead
