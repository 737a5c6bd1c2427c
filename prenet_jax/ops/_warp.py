"""Differentiable resampling of single frames: translation, ellipse correction, and
the composed recentre-and-correct map.

Every function here works on ONE frame ``(H, W)`` and is jit-able, vmap-able and
differentiable with respect to the image and to the geometric parameters. Pixel
centres sit at integer ``(row, col)``; samples outside the frame read as 0.

Interpolation methods
---------------------
``"linear"``
    ``jax.scipy.ndimage.map_coordinates(order=1)``. Cheapest, but blurs: a half-pixel
    shift lowers a sharp spot's peak by several per cent.
``"cubic"``
    Keys cubic convolution (a = -1/2), 16 taps; interpolating and third-order
    accurate, so a half-pixel shift keeps sharp features (measured in
    ``benchmarks/interpolation.py``).
``"fourier"`` (translation only)
    Multiplies the spectrum by a phase ramp: exact for band-limited content, but it
    rings at hard disk edges and wraps around the frame borders.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

__all__ = [
    "Interpolation",
    "frame_center",
    "sample",
    "translate",
    "affine_warp",
    "correct_ellipse",
    "recenter",
    "recenter_and_correct",
    "resize",
    "resize_coordinates",
]

Interpolation = Literal["linear", "cubic"]
_KEYS_A = -0.5


def frame_center(shape: tuple[int, ...]) -> tuple[float, float]:
    """Geometric centre ``((H-1)/2, (W-1)/2)`` of frames of shape ``(..., H, W)``."""
    return ((shape[-2] - 1) / 2.0, (shape[-1] - 1) / 2.0)


def _keys_weights(t: jax.Array) -> jax.Array:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``t``."""
    a = _KEYS_A
    x = jnp.stack([t + 1.0, t, 1.0 - t, 2.0 - t], axis=0)  # distances, all >= 0
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return jnp.where(x <= 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _sample_cubic(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    h, w = image.shape
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    wr = _keys_weights(rows - r0)  # (4, ...)
    wc = _keys_weights(cols - c0)
    offs = jnp.arange(-1, 3).reshape((4,) + (1,) * rows.ndim)
    ir = r0.astype(jnp.int32)[None] + offs  # (4, ...)
    ic = c0.astype(jnp.int32)[None] + offs
    vr = (ir >= 0) & (ir < h)
    vc = (ic >= 0) & (ic < w)
    # Zero the weights of taps outside the frame ("constant 0" boundary).
    wr = jnp.where(vr, wr, 0.0)
    wc = jnp.where(vc, wc, 0.0)
    irc = jnp.clip(ir, 0, h - 1)
    icc = jnp.clip(ic, 0, w - 1)
    vals = image[irc[:, None], icc[None, :]]  # (4, 4, ...)
    return jnp.einsum("i...,j...,ij...->...", wr, wc, vals)


def sample(image: jax.Array, rows: jax.Array, cols: jax.Array, method: Interpolation = "linear") -> jax.Array:
    """Read ``image`` (H, W) at fractional ``(rows, cols)`` (any equal shapes); 0 outside."""
    image = jnp.asarray(image, jnp.float32)
    if method == "linear":
        return jax.scipy.ndimage.map_coordinates(image, [rows, cols], order=1, mode="constant", cval=0.0)
    if method == "cubic":
        return _sample_cubic(image, rows, cols)
    raise ValueError(f"unknown interpolation {method!r}: use 'linear' or 'cubic'")


def _grid(shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    return jnp.meshgrid(jnp.arange(shape[0], dtype=jnp.float32), jnp.arange(shape[1], dtype=jnp.float32), indexing="ij")


def _matvec(m: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.dot(m, v, precision=jax.lax.Precision.HIGHEST)


def affine_warp(image: jax.Array, matrix: jax.Array, offset: jax.Array, method: Interpolation = "linear") -> jax.Array:
    """``out[o] = image[matrix @ o + offset]``, the convention of ``scipy.ndimage.affine_transform``.

    Parameters
    ----------
    image : (H, W)
    matrix : (2, 2), ``(row, col)`` order
    offset : (2,)
    """
    matrix = jnp.asarray(matrix, jnp.float32)
    offset = jnp.asarray(offset, jnp.float32)
    r, c = _grid(image.shape)
    # Elementwise products, not a matmul: no TF32 rounding of the coordinates on GPUs.
    rows = matrix[0, 0] * r + matrix[0, 1] * c + offset[0]
    cols = matrix[1, 0] * r + matrix[1, 1] * c + offset[1]
    return sample(image, rows, cols, method)


def recenter_and_correct(
    image: jax.Array,
    center: jax.Array,
    matrix: jax.Array | None = None,
    method: Interpolation = "linear",
) -> jax.Array:
    """ONE resampling that moves ``center`` to the frame centre and undoes the ellipse.

    Output pixel ``q`` reads the input at ``center + D (q - c0)`` with
    ``c0 = ((H-1)/2, (W-1)/2)`` and ``D`` the distortion matrix
    (:func:`prenet_jax.ellipse_matrix`; identity when ``matrix`` is None).

    Parameters
    ----------
    image : (H, W)
    center : (2,) ``(row, col)`` of the beam centre in ``image``
    matrix : (2, 2) or None
    """
    center = jnp.asarray(center, jnp.float32)
    c0 = jnp.asarray(frame_center(image.shape), jnp.float32)
    if matrix is None:
        matrix = jnp.eye(2, dtype=jnp.float32)
    matrix = jnp.asarray(matrix, jnp.float32)
    return affine_warp(image, matrix, center - _matvec(matrix, c0), method)


def correct_ellipse(image: jax.Array, matrix: jax.Array, center: jax.Array | None = None, method: Interpolation = "linear") -> jax.Array:
    """Undo the distortion ``matrix`` about ``center`` (default: the frame centre), no shift."""
    c = jnp.asarray(frame_center(image.shape), jnp.float32) if center is None else jnp.asarray(center, jnp.float32)
    matrix = jnp.asarray(matrix, jnp.float32)
    return affine_warp(image, matrix, c - _matvec(matrix, c), method)


def _fourier_shift(image: jax.Array, shift: jax.Array) -> jax.Array:
    h, w = image.shape
    ky = jnp.fft.fftfreq(h)[:, None]
    kx = jnp.fft.rfftfreq(w)[None, :]
    phase = jnp.exp(-2j * jnp.pi * (ky * shift[0] + kx * shift[1]))
    return jnp.fft.irfft2(jnp.fft.rfft2(image) * phase, s=(h, w))


def translate(image: jax.Array, shift: jax.Array, method: Literal["linear", "cubic", "fourier"] = "linear") -> jax.Array:
    """Move the content by ``shift = (d_row, d_col)`` pixels: ``out(q) = image(q - shift)``.

    ``"fourier"`` is periodic: what leaves one border comes back at the other.
    """
    image = jnp.asarray(image, jnp.float32)
    shift = jnp.asarray(shift, jnp.float32)
    if method == "fourier":
        return _fourier_shift(image, shift)
    return affine_warp(image, jnp.eye(2, dtype=jnp.float32), -shift, method)


def recenter(image: jax.Array, center: jax.Array, method: Literal["linear", "cubic", "fourier"] = "linear") -> jax.Array:
    """Translate so that ``center`` lands on ``((H-1)/2, (W-1)/2)``."""
    c0 = jnp.asarray(frame_center(image.shape), jnp.float32)
    return translate(image, c0 - jnp.asarray(center, jnp.float32), method)


def resize(frames: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Resample ``(..., H, W)`` frames to ``(..., h, w)`` (linear, anti-aliased, half-pixel centres)."""
    if tuple(frames.shape[-2:]) == tuple(shape):
        return frames
    return jax.image.resize(frames, frames.shape[:-2] + tuple(shape), method="linear", antialias=True)


def resize_coordinates(points: jax.Array, from_shape: tuple[int, int], to_shape: tuple[int, int]) -> jax.Array:
    """Map ``(..., 2)`` pixel coordinates between two resolutions of the same frame.

    Pixel centres are at integers in both, so ``x' = (x + 1/2) * (n' / n) - 1/2``
    (the convention of :func:`resize`).
    """
    scale = jnp.asarray([to_shape[0] / from_shape[0], to_shape[1] / from_shape[1]], jnp.float32)
    return (points + 0.5) * scale - 0.5
