"""Self-calibration: refine a beam centre and an ellipse by gradient descent through the warp.

No labels are needed. A beam centre is where the pattern best matches its own 180°
rotation (Friedel symmetry of the direct disk and of every pair of reflections); an
ellipse is what makes the corrected mean pattern azimuthally uniform (the radial
profile of a ring or a disk does not depend on the angle). Both objectives are
evaluated through the same interpolation the pipeline warps with, so their gradients
are those of the geometry the pipeline applies, and both start from whatever estimate
the pipeline has (network, fit or centre of mass).

Intensities enter as ``sqrt(I / max I)``: Poisson noise has the same variance there at
every intensity, so the direct disk does not outweigh the weak reflections.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..conventions import Ellipse
from ._filters import gaussian_filter
from ._masks import fill_masked, mirrored_valid
from ._warp import Interpolation, _keys_weights, frame_center, sample

__all__ = [
    "refine_center",
    "refine_ellipse",
    "friedel_mismatch",
    "azimuthal_variance",
    "ellipse_params",
    "ellipse_of_params",
    "matrix_of_params",
    "RefinedEllipse",
]


def _stabilise(image: jax.Array, smooth: float = 0.0) -> jax.Array:
    """``sqrt(I / max I)``, then a Gaussian of ``smooth`` px.

    The smoothing matters for noisy frames: interpolating white noise averages it, so a
    mismatch between a frame and its interpolated rotation is smallest where the
    interpolation averages most (half-pixel offsets), a bias of up to half a pixel at
    10 counts a pixel. Noise that is already smooth is barely changed by the
    interpolation, and the bias goes (measured: 0.4 px -> below 0.05 px, ``smooth=1``).
    """
    x = jnp.maximum(jnp.asarray(image, jnp.float32), 0.0)
    m = jnp.max(x)
    x = jnp.sqrt(x / jnp.where(m > 0, m, 1.0))
    return gaussian_filter(x[None], smooth)[0] if smooth > 0 else x


# ----------------------------------------------------------------------------- centre


def _window(frame: jax.Array, start: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
    """The ``window`` x ``window`` pixels around ``start`` (whole pixels, zero outside)
    and the row/col of its first pixel in the frame."""
    h, w = frame.shape
    origin = jnp.round(start - (window - 1) / 2.0).astype(jnp.int32)
    padded = jnp.pad(frame, window)
    o = jnp.clip(origin, -window, jnp.asarray([h, w])) + window
    return jax.lax.dynamic_slice(padded, (o[0], o[1]), (window, window)), origin.astype(jnp.float32)


def _tap_weights(f: jax.Array, method: Interpolation) -> tuple[jax.Array, jax.Array]:
    """The weights of the taps at offsets -1, 0, 1, 2 for a fractional position ``f``,
    and their derivatives in ``f``: exactly those :func:`~prenet_jax.ops.sample` uses."""
    if method == "cubic":
        kernel = _keys_weights
    elif method == "linear":
        kernel = lambda t: jnp.stack([jnp.zeros_like(t), 1.0 - t, t, jnp.zeros_like(t)])  # noqa: E731
    else:
        raise ValueError(f"unknown interpolation {method!r}: use 'linear' or 'cubic'")
    return jax.jvp(kernel, (f,), (jnp.ones_like(f),))


def _reflect_axis(x: jax.Array, s: jax.Array, axis: int, method: Interpolation) -> tuple[jax.Array, jax.Array]:
    """``y[i] = x(s - i)`` along ``axis`` (zero outside), and ``dy/ds``.

    ``s - i`` has the same fractional part for every pixel ``i``, so the interpolation
    is four shifted copies of the reversed axis, weighted by four scalars: slices and a
    weighted sum instead of a gather per pixel and tap (the gather made the refinement
    cost more than the rest of the classical step).
    """
    n = x.shape[axis]
    pad = n + 4  # room for a reflection point up to n + 3 px outside the window
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    rev = jnp.flip(jnp.pad(x, widths), axis)
    base = jnp.floor(s)
    w, dw = _tap_weights(s - base, method)
    # Tap k reads x[base - i + k] = rev[n + pad - 1 - base - k + i].
    first = (n + pad - 1 - base).astype(jnp.int32)
    taps = jnp.stack([jax.lax.dynamic_slice_in_dim(rev, first - k, n, axis) for k in (-1, 0, 1, 2)])
    return jnp.tensordot(w, taps, 1), jnp.tensordot(dw, taps, 1)


def _reflection(img: jax.Array, c: jax.Array, method: Interpolation) -> tuple[jax.Array, jax.Array]:
    """``img(2c - q)`` over the window's pixels ``q`` (the 180° rotation about ``c``,
    read as :func:`~prenet_jax.ops.sample` reads it), and its Jacobian in ``c``, (2, H, W)."""
    by_rows, d_rows = _reflect_axis(img, 2.0 * c[0], 0, method)
    both, d_cols = _reflect_axis(jnp.stack([by_rows, d_rows]), 2.0 * c[1], 2, method)
    return both[0], 2.0 * jnp.stack([both[1], d_cols[0]])


def _friedel_residual(img: jax.Array, c: jax.Array, method: Interpolation) -> jax.Array:
    """``img(q) - img(2c - q)`` over the window's pixels ``q``."""
    return img - _reflection(img, c, method)[0]


def friedel_mismatch(
    frame: jax.Array, center: jax.Array, window: int = 64, method: Interpolation = "cubic", smooth: float = 1.0
) -> jax.Array:
    """Mean squared difference of a frame and its 180° rotation about ``center``, over the
    disk of diameter ``window`` px around it (stabilised intensities). 0 for a
    centrosymmetric pattern rotated about its centre."""
    img, origin = _window(frame, jnp.asarray(center, jnp.float32), window)
    img = _stabilise(img, smooth)
    rows, cols = jnp.meshgrid(jnp.arange(window, dtype=jnp.float32), jnp.arange(window, dtype=jnp.float32), indexing="ij")
    c = jnp.asarray(center, jnp.float32) - origin
    mask = ((rows - c[0]) ** 2 + (cols - c[1]) ** 2) <= (window / 2.0 - 1.0) ** 2
    r = _friedel_residual(img, c, method)
    return jnp.sum(jnp.where(mask, r * r, 0.0)) / jnp.maximum(mask.sum(), 1)


@functools.partial(jax.jit, static_argnames=("window", "steps", "max_move", "method", "smooth"))
def refine_center(
    frame: jax.Array,
    center: jax.Array,
    *,
    window: int = 64,
    steps: int = 6,
    max_move: float | None = None,
    method: Interpolation = "cubic",
    smooth: float = 1.0,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Refine a beam centre by Friedel symmetry, Gauss-Newton through the warp.

    Minimises ``sum_q w_q [A(q) - A(2c - q)]^2`` over the pixels ``q`` within a disk of
    diameter ``window - 2 max_move`` around the start (``A`` the stabilised intensity,
    ``A(2c - q)`` read by the pipeline's interpolation). Each step solves the 2x2
    normal equations of the residual's Jacobian in ``c`` (forward-mode derivatives
    through the interpolation), damped (Levenberg) so that a flat objective does not
    throw the centre away.

    Parameters
    ----------
    frame : (H, W)
    center : (2,) the start, ``(row, col)``
    window : side of the square of pixels used (static); it must hold the direct disk
        and its edge
    steps : Gauss-Newton steps (static)
    max_move : the refinement may move the centre at most this far (px); default
        ``window / 8``
    method : interpolation of the rotated frame: ``"cubic"`` (Keys; unbiased at
        sub-pixel shifts) or ``"linear"``
    smooth : Gaussian (px) applied to the window first (see :func:`_stabilise`)
    valid : (H, W), 1 = good, 0 = masked: a pixel counts only where it and its mirror
        about the start are both seen (``valid(q) valid(2 c0 - q)``,
        :func:`~prenet_jax.ops.mirrored_valid`, following the centre as it moves); masked
        pixels are filled from their neighbours first (:func:`~prenet_jax.ops.fill_masked`)
        so that the smoothing spreads no 0 into the pixels that count (measured on a
        beam stop over the disk edge: 1.5x the unobstructed error, against 1.7x when
        the mask is instead widened by the smoothing's reach)

    Returns
    -------
    center : (2,) float32, the refined centre, or the start when the refinement failed
    ok : () bool, False when it would have moved further than ``max_move``, raised
        the mismatch, or the window holds no signal (the start is returned then)
    """
    start = jnp.asarray(center, jnp.float32)
    limit = window / 8.0 if max_move is None else float(max_move)
    frame = jnp.asarray(frame, jnp.float32)
    if valid is not None:
        # filled from the neighbours, so that the smoothing spreads no 0 (or spike) from a
        # masked pixel into the pixels that count
        frame = fill_masked(frame, valid)
    img, origin = _window(frame, start, window)
    img = _stabilise(img, smooth)
    rows, cols = jnp.meshgrid(jnp.arange(window, dtype=jnp.float32), jnp.arange(window, dtype=jnp.float32), indexing="ij")
    c0 = start - origin
    radius = window / 2.0 - limit - 2.0
    weight = (((rows - c0[0]) ** 2 + (cols - c0[1]) ** 2) <= radius**2).astype(jnp.float32)
    if valid is None:
        weight_at = lambda c: weight  # noqa: E731
        cost = lambda c: jnp.sum(jnp.square(weight * _friedel_residual(img, c, method)))  # noqa: E731
    else:
        bad, _ = _window(1.0 - jnp.asarray(valid, jnp.float32), start, window)  # outside the frame: valid
        seen = weight * (1.0 - bad)
        # the pairs both seen about the current centre (they move with it); the cost is
        # per weight, so that steps that change how many pairs are seen compare fairly
        weight_at = lambda c: seen * mirrored_valid(1.0 - bad, c)  # noqa: E731

        def cost(c):
            wc = weight_at(c)
            return jnp.sum(jnp.square(wc * _friedel_residual(img, c, method))) / jnp.maximum(jnp.sum(wc * wc), 1e-6)

    def step(_, carry):
        c, lam, now = carry
        wc = weight_at(c)
        value, jac = _reflection(img, c, method)
        r = (wc * (img - value)).ravel()
        jac = -(wc * jac).reshape(2, -1).T  # (N, 2): the residual's Jacobian
        g = jac.T @ r
        h = jac.T @ jac
        d = -jnp.linalg.solve(h + lam * (jnp.trace(h) / 2.0 + 1e-12) * jnp.eye(2), g)
        after = cost(c + d)
        better = after < now
        # Levenberg: accept and trust the model more, or reject and damp harder.
        return jnp.where(better, c + d, c), jnp.where(better, lam * 0.3, lam * 10.0), jnp.where(better, after, now)

    first = cost(c0)
    c, _, last = jax.lax.fori_loop(0, steps, step, (c0, jnp.float32(1e-3), first))
    # No signal in the window (an empty or dark frame): nothing to refine from.
    ok = (jnp.linalg.norm(c - c0) <= limit) & (last <= first) & jnp.all(jnp.isfinite(c)) & jnp.any(weight_at(c0) * img > 0)
    return jnp.where(ok, c + origin, start), ok


# ----------------------------------------------------------------------------- ellipse


def ellipse_params(ellipse: Ellipse) -> jax.Array:
    """``(2,)`` smooth coordinates of an ellipse: ``L (cos 2 theta, sin 2 theta)`` with
    ``L = log(ratio) / 2``. No angle wraps and the circle is the origin, so a gradient
    method can pass through it."""
    half_log = 0.5 * jnp.log(jnp.float32(ellipse.ratio))
    return half_log * jnp.array([jnp.cos(2 * ellipse.angle), jnp.sin(2 * ellipse.angle)], jnp.float32)


def matrix_of_params(p: jax.Array) -> jax.Array:
    """The distortion matrix ``D`` (:func:`prenet_jax.ops.ellipse_matrix`) of
    :func:`ellipse_params`: ``D = expm(L M) = cosh L I + sinh L M`` with
    ``M = [[-cos 2t, sin 2t], [sin 2t, cos 2t]]`` in (row, col) order (``M^2 = I``)."""
    half_log = jnp.sqrt(jnp.sum(p * p) + 1e-20)
    sinhc = jnp.where(half_log > 1e-6, jnp.sinh(half_log) / half_log, 1.0)
    m = jnp.array([[-p[0], p[1]], [p[1], p[0]]])  # = L M
    return jnp.cosh(half_log) * jnp.eye(2) + sinhc * m


def ellipse_of_params(p: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(ratio, angle)`` of the smooth coordinates ``p`` of :func:`ellipse_params` (its inverse)."""
    half_log = jnp.sqrt(jnp.sum(p * p))
    return jnp.exp(2.0 * half_log), jnp.mod(0.5 * jnp.arctan2(p[1], p[0]), jnp.pi)


def _polar_grid(shape, n_angles: int, band: tuple[float, float], n_radii: int):
    c = jnp.asarray(frame_center(shape), jnp.float32)
    phi = 2 * jnp.pi * jnp.arange(n_angles, dtype=jnp.float32) / n_angles
    rad = jnp.linspace(band[0], band[1], n_radii, dtype=jnp.float32)
    return c[0] + jnp.sin(phi)[:, None] * rad[None, :], c[1] + jnp.cos(phi)[:, None] * rad[None, :]


def azimuthal_variance(
    mean_pattern: jax.Array,
    p: jax.Array,
    center: jax.Array,
    *,
    band: tuple[float, float],
    n_angles: int = 128,
    n_radii: int = 96,
    method: Interpolation = "cubic",
) -> jax.Array:
    """The objective of :func:`refine_ellipse`: mean over the ``band`` of radii of the
    variance over angles of the corrected pattern's polar transform (stabilised
    intensities, relative to their mean square).

    The corrected pattern is ``recenter_and_correct(mean_pattern, center,
    matrix_of_params(p))``, read directly on the polar grid: one interpolation, as the
    pipeline's warp. Rings and the direct disk's edge make it small at the right
    ellipse; the Bragg spots of a single-crystal mean pattern, which no ellipse makes
    uniform, add variance that does not depend on it (measured: no gain there, and the
    refinement's check that the variance falls keeps the start).
    """
    img = _stabilise(mean_pattern)
    d = matrix_of_params(p)
    rows, cols = _polar_grid(img.shape, n_angles, band, n_radii)
    c0 = jnp.asarray(frame_center(img.shape), jnp.float32)
    # The composed map of recenter_and_correct, evaluated at the polar points only.
    src_r = center[0] + d[0, 0] * (rows - c0[0]) + d[0, 1] * (cols - c0[1])
    src_c = center[1] + d[1, 0] * (rows - c0[0]) + d[1, 1] * (cols - c0[1])
    polar = sample(img, src_r, src_c, method)
    return jnp.mean(jnp.var(polar, axis=0)) / jnp.maximum(jnp.mean(polar**2), 1e-12)


class RefinedEllipse(NamedTuple):
    """The result of :func:`refine_ellipse`: the ellipse, the centre (refined when one was
    given, else the frame centre), the objective before and after, and whether it
    improved (False: the start was returned)."""

    ellipse: Ellipse
    center: tuple[float, float]
    variance_before: float
    variance_after: float
    ok: bool


@functools.partial(jax.jit, static_argnames=("steps", "refine_center_too", "n_angles", "n_radii", "method", "band"))
def _refine_ellipse_jit(
    mean_pattern, p0, c0, steps: int, refine_center_too: bool, band, n_angles: int, n_radii: int, method: Interpolation
):
    x0 = jnp.concatenate([p0, c0]) if refine_center_too else p0

    def f(x):
        c = x[2:] if refine_center_too else c0
        return azimuthal_variance(mean_pattern, x[:2], c, band=band, n_angles=n_angles, n_radii=n_radii, method=method)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    def body(carry, _):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return (optax.apply_updates(x, updates), state), value

    (x, _), _ = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
    return x, f(x0), f(x)


def refine_ellipse(
    mean_pattern,
    ellipse: Ellipse,
    center=None,
    *,
    steps: int = 30,
    band: tuple[float, float] | None = None,
    n_angles: int = 128,
    n_radii: int = 96,
    method: Interpolation = "cubic",
    min_gain: float = 0.01,
) -> RefinedEllipse:
    """Refine the ellipse of a mean pattern by minimising its corrected azimuthal variance.

    The corrected pattern is the pipeline's composed warp of the mean pattern (recentre
    at ``center``, undo the ellipse); its polar transform about the frame centre should
    not depend on the angle. optax L-BFGS (zoom line search) minimises the variance over
    angles, averaged over the radial ``band``, in the smooth coordinates of
    :func:`ellipse_params` (and the centre, when one is given).

    Parameters
    ----------
    mean_pattern : (H, W) a mean pattern (recentred, or not when ``center`` is given)
    ellipse : the start (network, edge fit, ...)
    center : (2,) its beam centre ``(row, col)``; refined as well when given. Default:
        the pattern is taken as recentred (the frame centre) and the centre is not refined
    steps : L-BFGS iterations
    band : ``(r_min, r_max)`` px of the corrected pattern that hold signal; default from
        3 px to the largest circle inside the frame less 3 px
    n_angles, n_radii : the polar grid of the objective
    method : interpolation
    min_gain : the relative fall of the variance below which the start is kept. On the
        mean of a single crystal's spots the variance barely depends on the ellipse
        (measured: 0.2 % lower at a ratio 0.007 further from the truth), while on a
        disk or rings a real correction lowers it by several per cent (8 % for a
        ratio error of 5e-4 and 0.5 degrees).

    Returns
    -------
    :class:`RefinedEllipse`; when the variance does not fall by ``min_gain``, the start
    comes back with ``ok=False``.
    """
    img = jnp.asarray(mean_pattern, jnp.float32)
    h, w = img.shape
    if band is None:
        band = (3.0, min(h, w) / 2.0 - 3.0)
    band = (float(band[0]), float(band[1]))
    given = center is not None
    c0 = jnp.asarray(center if given else frame_center(img.shape), jnp.float32)
    x, before, after = _refine_ellipse_jit(img, ellipse_params(ellipse), c0, int(steps), given, band, int(n_angles), int(n_radii), method)
    before, after = float(before), float(after)
    ok = bool(after < (1.0 - min_gain) * before) and bool(jnp.all(jnp.isfinite(x)))
    if not ok:
        return RefinedEllipse(ellipse, (float(c0[0]), float(c0[1])), before, before, False)
    ratio, angle = ellipse_of_params(x[:2])
    c = x[2:] if given else c0
    return RefinedEllipse(Ellipse(float(ratio), float(angle)), (float(c[0]), float(c[1])), before, after, True)
