"""Classical ellipse estimate: fit the strongest ring edge of a mean pattern.

The mean pattern is resampled in polar coordinates about its (approximate)
centre; along every azimuth the sub-pixel radius of the steepest intensity drop
(the outer edge of the direct disk, or of the strongest ring) is located by a
Gaussian (log-parabola) fit to the peak of the radial gradient. The polar centre
is moved to the edge's centre (the first azimuthal harmonic of ``r(phi)``) and
the edge found again; then ``r(phi)^-2 = A + B cos 2phi + C sin 2phi``, exact for
an ellipse about its centre, is fitted by linear least squares (with one round of
outlier rejection), which gives the axes and the angle in closed form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._filters import gaussian_filter
from ._warp import Interpolation, frame_center, sample

__all__ = ["polar_transform", "fit_ellipse_edge", "MAX_FIT_RATIO"]

#: The largest axis ratio the edge fit reports. Projector distortions are a few per
#: cent (training draws 1.0-1.2); a fitted ratio beyond 2 is a failed fit, not optics.
MAX_FIT_RATIO = 2.0


# Jitted so that eager callers compile once rather than op by op.
@functools.partial(jax.jit, static_argnames=("n_angles", "n_radii", "r_max", "method"))
def polar_transform(
    image: jax.Array,
    center: jax.Array | None = None,
    n_angles: int = 360,
    n_radii: int | None = None,
    r_max: float | None = None,
    method: Interpolation = "linear",
) -> jax.Array:
    """Resample ``image`` (H, W) on a polar grid about ``center``.

    Returns ``(n_angles, n_radii)``: row ``i`` is the azimuth ``phi_i = 2 pi i / n_angles``
    measured from +x (col) towards +y (row), the package's angle convention; column
    ``j`` is the radius ``j * r_max / (n_radii - 1)`` px.
    """
    h, w = image.shape
    c = jnp.asarray(frame_center(image.shape) if center is None else center, jnp.float32)
    if r_max is None:
        r_max = min(h, w) / 2.0 - 1.0
    if n_radii is None:
        n_radii = int(round(r_max)) + 1
    phi = 2 * jnp.pi * jnp.arange(n_angles, dtype=jnp.float32) / n_angles
    rad = jnp.linspace(0.0, r_max, n_radii, dtype=jnp.float32)
    rows = c[0] + jnp.sin(phi)[:, None] * rad[None, :]
    cols = c[1] + jnp.cos(phi)[:, None] * rad[None, :]
    return sample(image, rows, cols, method)


def _edge_radii(grad: jax.Array, rad: jax.Array, lo: jax.Array, hi: jax.Array, outer: jax.Array | float = jnp.inf, steps: int = 3):
    """Sub-pixel radius of the steepest drop of every polar row within ``[lo, hi]`` (per row).

    ``grad`` (A, R) is the radial derivative (drop positive) sampled at the radii
    ``rad``. The derivative of a blurred edge is a bump about the edge; its centroid
    within a window of +-3 widths, centred on the previous estimate (first the
    arg-max) and tapered at the ends, is taken ``steps`` times. Being an integral
    over the whole bump it is insensitive to the small ripple that interpolation
    leaves between pixels (a parabola through the few samples at the top is not: it
    moves by up to 0.1 px). Returns ``(radius, peak height, ok, bump width)``, the
    last the median rms width (px) of the gradient's bump.
    """
    dr = rad[1] - rad[0]
    inside = (rad[None, :] >= lo[:, None]) & (rad[None, :] <= hi[:, None])
    g = jnp.where(inside, grad, -jnp.inf)
    j = jnp.argmax(g, axis=1)
    g0 = jnp.take_along_axis(grad, j[:, None], 1)[:, 0]
    pos = jnp.maximum(grad, 0.0)
    r0 = rad[j]
    # The bump's width: the rms of the positive gradient within +-3 px of the peak.
    near = jnp.clip(3.5 - jnp.abs(rad[None, :] - r0[:, None]) / dr * dr, 0.0, 1.0)
    wn = pos * near
    tot = jnp.maximum(wn.sum(1), 1e-30)
    mu = (wn * rad[None, :]).sum(1) / tot
    sig = jnp.sqrt((wn * (rad[None, :] - mu[:, None]) ** 2).sum(1) / tot)
    width = jnp.clip(3.0 * jnp.median(sig), 1.0, 8.0)  # one window for every azimuth
    r_est = r0
    for _ in range(steps):
        win = jnp.clip(width + 0.5 - jnp.abs(rad[None, :] - r_est[:, None]), 0.0, 1.0)
        wts = pos * win
        tot = wts.sum(1)
        r_est = jnp.where(tot > 0, r_est + (wts * (rad[None, :] - r_est[:, None])).sum(1) / jnp.maximum(tot, 1e-30), r_est)
    # A peak on the band's limit is a drop that goes on beyond it (the edge lies outside
    # the band, or outside the frame), not an edge: its centroid would be truncated.
    ok = (g0 > 0) & jnp.isfinite(r_est) & (r_est >= lo) & (r_est <= hi) & (r0 > lo + dr) & (r0 < hi - dr)
    # The centroid's window must end inside the band's outer limit (``outer``): cut
    # there it reads an edge that goes on beyond it as one inside (a disk larger than
    # the frame's inscribed circle on some azimuths: 0.018 too round at ratio 1.06).
    ok = ok & (r0 + width <= outer)
    return r_est, jnp.where(ok, g0, 0.0), ok, jnp.median(sig)


def _harmonic_fit(phi: jax.Array, r_edge: jax.Array, w: jax.Array) -> jax.Array:
    """Weighted least squares ``(r / s)^-2 = A + B cos 2phi + C sin 2phi + D cos phi + E sin phi``.

    The first three terms are exact for an ellipse about the polar centre; the last two
    absorb a small residual offset of that centre. Returns ``(A, B, C, D, E)`` for
    ``s = 1`` (rescaled internally for conditioning).
    """
    s = jnp.maximum(jnp.sum(w * r_edge) / jnp.maximum(jnp.sum(w), 1e-12), 1.0)
    u = (r_edge / s) ** -2
    m = jnp.stack([jnp.ones_like(phi), jnp.cos(2 * phi), jnp.sin(2 * phi), jnp.cos(phi), jnp.sin(phi)], -1)
    mw = m * w[:, None]
    hi = jax.lax.Precision.HIGHEST
    lhs = jnp.matmul(mw.T, m, precision=hi) + 1e-9 * jnp.eye(5)
    rhs = jnp.matmul(mw.T, u, precision=hi)
    return jnp.linalg.solve(lhs, rhs) / s**2


def _axes_angle(p: jax.Array):
    """``(a, b, angle)`` from ``1/r^2 = (1/a^2 + 1/b^2)/2 - (1/b^2 - 1/a^2)/2 cos 2(phi - angle)``."""
    amp = jnp.hypot(p[1], p[2])
    a = jax.lax.rsqrt(jnp.maximum(p[0] - amp, 1e-12))
    b = jax.lax.rsqrt(jnp.maximum(p[0] + amp, 1e-12))
    return a, b, jnp.mod(0.5 * jnp.arctan2(-p[2], -p[1]), jnp.pi)


def _harmonic_radius(p: jax.Array, phi: jax.Array) -> jax.Array:
    v = p[0] + p[1] * jnp.cos(2 * phi) + p[2] * jnp.sin(2 * phi) + p[3] * jnp.cos(phi) + p[4] * jnp.sin(phi)
    return jax.lax.rsqrt(jnp.maximum(v, 1e-12))


def fit_ellipse_edge(
    mean_pattern: jax.Array,
    center: jax.Array | None = None,
    r_min: float = 2.0,
    r_max: float | None = None,
    n_angles: int = 360,
    smooth: float = 1.0,
    iterations: int = 3,
    coverage: jax.Array | None = None,
    band: jax.Array | None = None,
    robust_steps: int = 4,
) -> dict[str, jax.Array]:
    """Fit an ellipse to the steepest radial edge of a (recentred) mean pattern.

    Parameters
    ----------
    mean_pattern : (H, W)
    center : (2,) ``(row, col)`` about which to search; default the frame centre
    r_min, r_max : radial band (px) in which the edge is searched
    n_angles : number of azimuths
    smooth : Gaussian blur (px) before differentiating, against noise
    iterations : passes that move the polar centre onto the edge's centre before the
        final fit
    coverage : (H, W) fraction of the averaged frames in which each pixel of the mean was
        seen (a detector mask, recentred with every frame): an azimuth whose edge passes
        within 2.5 px of a pixel some frame did not see (coverage under 0.99) is left out,
        since the filled shadow of a beam stop has no true edge (measured on a rod over
        half the azimuths: the angle 1.1 deg off at ratio 1.06, against 3 deg at a 0.9
        threshold and 6.5 deg without the coverage); the centre updates then fit the
        first and second harmonics of the edge together, which a gap would otherwise mix
    band : (2,) ``(lo, hi)`` px, traced (no recompilation): search only this band of
        radii (within ``[r_min, r_max]``), e.g. about one ring of several
    robust_steps : iterations of Tukey's biweight on the radial misfit after the hard cut

    Returns
    -------
    dict with ``a``, ``b`` (px, ``a >= b``), ``angle`` (a-axis, ``[0, pi)``),
    ``center`` (fitted ellipse centre, ``(row, col)``), ``residual`` (RMS radial misfit
    in px over the azimuths kept), ``scale`` (robust scale of the radial misfit, px),
    ``used`` (the azimuths' summed robust weights), ``fraction`` (the share of all
    azimuths that hold a kept edge), ``width`` (the edge's median rms width, px: the
    noise of neighbouring azimuths is correlated over it), ``edge_radii`` and ``weights``
    (per azimuth ``2 pi i / n_angles``: the edge found about ``center`` and its final
    weight) as jax
    scalars/arrays; the ellipse's values all NaN when too few azimuths show
    an edge (an empty or flat pattern), or when the edge is no ellipse of axis ratio
    up to :data:`MAX_FIT_RATIO` (a stripe, or a mean of frames recentred on wrong
    centres, fits ``1/r^2`` with a vanishing or negative ``1/a^2``: a ratio of 100 or
    1e5, which would tear the frames apart if applied).
    """
    img = jnp.asarray(mean_pattern, jnp.float32)
    h, w = img.shape
    r_max = float(min(h, w) / 2.0 - 2.0 if r_max is None else r_max)
    c = jnp.asarray(frame_center(img.shape) if center is None else center, jnp.float32)
    band = jnp.asarray([r_min, r_max] if band is None else band, jnp.float32)
    cov = None if coverage is None else jnp.asarray(coverage, jnp.float32)
    return _fit_edge(img, c, jnp.float32(r_min), r_max, n_angles, float(smooth), iterations, cov, band, robust_steps)


# One compilation per frame shape, radial reach, mask or none and static setting,
# whichever arguments the caller spelled out: r_min, the centre and the band are traced
# (the small-disk fallback's 1 px search and every ring's band reuse one program).
@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 9))
def _fit_edge(img, c, r_min, r_max: float, n_angles: int, smooth: float, iterations: int, coverage, band, robust_steps: int):
    img = gaussian_filter(img, smooth)
    n_radii = 4 * int(round(r_max)) + 1  # quarter-pixel radial steps
    rad = jnp.linspace(0.0, r_max, n_radii)
    phi = 2 * jnp.pi * jnp.arange(n_angles) / n_angles
    band = jnp.clip(band, r_min, r_max)
    band_lo = jnp.full((n_angles,), band[0])
    band_hi = jnp.full((n_angles,), band[1])

    # The radial derivative is sampled from the Cartesian gradient (central differences
    # of the smoothed image): differentiating the cubic interpolant instead ripples
    # by ~5% between pixels, which moves a sub-pixel peak by up to 0.1 px.
    g_row = 0.5 * (jnp.roll(img, -1, 0) - jnp.roll(img, 1, 0))
    g_col = 0.5 * (jnp.roll(img, -1, 1) - jnp.roll(img, 1, 1))
    cos_p, sin_p = jnp.cos(phi)[:, None], jnp.sin(phi)[:, None]

    def edges(c, lo, hi):
        pr = polar_transform(g_row, c, n_angles, n_radii, r_max, method="cubic")
        pc = polar_transform(g_col, c, n_angles, n_radii, r_max, method="cubic")
        r, g0, ok, width = _edge_radii(-(pc * cos_p + pr * sin_p), rad, lo, hi, band[1])
        if coverage is not None:
            cov = polar_transform(jnp.asarray(coverage, jnp.float32), c, n_angles, n_radii, r_max, method="linear")
            near = jnp.abs(rad[None, :] - r[:, None]) <= 2.5
            ok = ok & (jnp.min(jnp.where(near, cov, 1.0), axis=1) > 0.99)
        return r, g0, ok, width

    # First pass over the whole band; later passes search +-3 px about the previous
    # edge (so a stronger feature elsewhere cannot capture an azimuth) after moving the
    # polar centre by the edge's first azimuthal harmonic.
    lo, hi = band_lo, band_hi
    for _ in range(iterations):
        r_edge, g0, ok, _ = edges(c, lo, hi)
        # Robust: the median edge, and only azimuths near it move the centre (a Bragg
        # disk touching the direct disk, or a brighter ring, takes a few azimuths
        # elsewhere, and their mean would pull the centre towards them).
        r_med = jnp.nanmedian(jnp.where(ok, r_edge, jnp.nan))
        r_med = jnp.where(jnp.isfinite(r_med), r_med, 0.5 * (band[0] + band[1]))
        dev = jnp.abs(r_edge - r_med)
        spread = 1.4826 * jnp.nanmedian(jnp.where(ok, dev, jnp.nan))
        ok = ok & (dev <= jnp.maximum(3.0 * spread, 0.1 * r_med + 1.0))
        wt = jnp.where(ok, 1.0, 0.0)
        nw = jnp.maximum(wt.sum(), 1.0)
        r_med = jnp.sum(wt * r_edge) / nw
        if coverage is None:  # every azimuth: the first harmonic by projection
            d_col = 2.0 * jnp.sum(wt * r_edge * jnp.cos(phi)) / nw
            d_row = 2.0 * jnp.sum(wt * r_edge * jnp.sin(phi)) / nw
        else:  # azimuths left out: projecting would read the gap (and the ellipse) as a shift
            basis = jnp.stack([jnp.ones_like(phi), jnp.cos(phi), jnp.sin(phi), jnp.cos(2 * phi), jnp.sin(2 * phi)], 1)
            normal = basis.T @ (wt[:, None] * basis) + 1e-6 * jnp.eye(5)
            _, d_col, d_row, _, _ = jnp.linalg.solve(normal, basis.T @ (wt * r_edge))
        step = jnp.clip(jnp.stack([d_row, d_col]), -0.25 * r_med, 0.25 * r_med)
        c = c + jnp.where(wt.sum() > 5, step, 0.0)
        # the edge about the moved centre
        pred = r_edge - d_col * jnp.cos(phi) - d_row * jnp.sin(phi)
        pred = jnp.where(ok, pred, r_med)
        lo = jnp.maximum(pred - 3.0, band[0])
        hi = jnp.minimum(pred + 3.0, band[1])

    r_edge, g0, ok, width = edges(c, lo, hi)
    weight = jnp.where(ok, 1.0, 0.0)
    p = _harmonic_fit(phi, r_edge, weight)
    res = r_edge - _harmonic_radius(p, phi)
    # One round of outlier rejection (a Bragg disk or hot pixel on the edge) ...
    mad = jnp.nanmedian(jnp.where(ok, jnp.abs(res), jnp.nan)) * 1.4826 + 1e-3  # over the azimuths with an edge
    weight = jnp.where(jnp.abs(res) < 3.0 * mad + 0.05, weight, 0.0)
    p = _harmonic_fit(phi, r_edge, weight)
    # ... then Tukey's biweight by iterated reweighting: Bragg disks that touch or
    # overlap the direct disk corrupt whole arcs of azimuths (a third of them on
    # the abTEM spot patterns), which one hard cut about a least-squares fit that
    # they already pulled does not remove.
    for _ in range(robust_steps):
        res = r_edge - _harmonic_radius(p, phi)
        scale = jnp.maximum(1.4826 * jnp.nanmedian(jnp.where(weight > 0, jnp.abs(res), jnp.nan)), 0.02)
        u = res / (4.685 * scale)
        weight = jnp.where(ok & (jnp.abs(u) < 1.0), (1.0 - u**2) ** 2, 0.0)
        p = _harmonic_fit(phi, r_edge, weight)
    # Our own blur (``smooth`` and the central differences, ~1/4 px^2) moves the
    # gradient's centroid inwards by ``var * kappa / 2`` on an edge of curvature kappa;
    # kappa differs between the axes, so uncorrected this biases the ratio by
    # ``-var (ratio - 1) / r^2`` (-0.0007 at r = 14 px, ratio 1.1). Undo it with the
    # curvature of the fitted ellipse.
    a, b, angle = _axes_angle(p)
    r_fit = _harmonic_radius(p.at[3:].set(0.0), phi)
    x, y = r_fit * jnp.cos(phi - angle), r_fit * jnp.sin(phi - angle)
    kappa = a * b / jnp.maximum((b * x / a) ** 2 + (a * y / b) ** 2, 1e-12) ** 1.5
    r_edge = r_edge + 0.5 * (smooth**2 + 0.25) * kappa
    p = _harmonic_fit(phi, r_edge, weight)
    res = r_edge - _harmonic_radius(p, phi)
    a, b, angle = _axes_angle(p)
    # Remaining centre offset, from the first harmonic of 1/r^2 ~ R^-2 - 2 R^-3 (dx cos + dy sin).
    r0 = jax.lax.rsqrt(jnp.maximum(p[0], 1e-12))
    off = -0.5 * r0**3 * jnp.stack([p[4], p[3]])  # (row, col)
    rms = jnp.sqrt(jnp.sum(weight * res**2) / jnp.maximum(jnp.sum(weight), 1e-12))
    scale = 1.4826 * jnp.nanmedian(jnp.where(weight > 0, jnp.abs(res), jnp.nan))
    # Five unknowns need well more than five edge points: with fewer (an empty or flat
    # pattern has none) there is no ellipse, and NaN says so to the caller.
    found = jnp.sum(weight > 0) >= max(12, n_angles // 8)
    amp = jnp.hypot(p[1], p[2])
    found = found & (p[0] - amp > 0) & (p[0] + amp <= MAX_FIT_RATIO**2 * (p[0] - amp))
    a, b, angle, rms, scale = (jnp.where(found, v, jnp.nan) for v in (a, b, angle, rms, scale))
    return {
        "a": a,
        "b": b,
        "angle": angle,
        "center": jnp.where(found, c + off, jnp.nan),
        "residual": rms,
        "scale": scale,
        "used": jnp.sum(weight),
        "fraction": jnp.mean(weight > 0),
        "edge_radii": r_edge,
        "weights": weight,
        "width": width,
    }
