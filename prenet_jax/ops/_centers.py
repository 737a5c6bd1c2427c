"""Beam-centre estimators for one frame ``(H, W)``; all return ``(row, col)`` float32.

Each is jit-able and vmap-able; :func:`heatmap_center` and :func:`com_center` are
also differentiable in the image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._filters import gaussian_filter
from ._masks import mirrored_valid
from ._warp import frame_center

__all__ = ["heatmap_center", "com_center", "friedel_center", "direct_beam_found", "shift_between", "BEAM_CONTRAST"]

#: The peak of a 5x5 local mean over the frame's mean above which a frame shows a
#: direct beam (:func:`direct_beam_found`).
BEAM_CONTRAST = 2.5


def _weighted_com(weights: jax.Array, fallback: jax.Array) -> jax.Array:
    h, w = weights.shape
    total = weights.sum()
    rows = jnp.arange(h, dtype=jnp.float32)
    cols = jnp.arange(w, dtype=jnp.float32)
    safe = jnp.where(total > 0, total, 1.0)
    com = jnp.stack([(weights.sum(axis=1) * rows).sum() / safe, (weights.sum(axis=0) * cols).sum() / safe])
    # An all-flat input has no centre to find: return the fallback, never NaN.
    return jnp.where(total > 0, com, fallback)


def heatmap_center(heatmap: jax.Array, threshold: float = 0.2, radius: float = 8.0) -> jax.Array:
    """Sub-pixel centre of a heatmap by a robust weighted centre of mass.

    Weights are ``max(h - threshold * max(h), 0) ** 2`` inside a disk of ``radius``
    px around the arg-max. Subtracting the threshold removes the flat background
    that would pull a plain centre of mass towards the frame centre; the disk
    stops a second, spurious blob from biasing the estimate; squaring makes the
    weights smooth at the threshold, which removes the sampling bias of a hard
    cut (measured on sigma = 2 px Gaussians: 0.013 px worst case without the
    square, 0.0005 px with it).

    Parameters
    ----------
    heatmap : (H, W)
    threshold : fraction of the maximum subtracted before weighting
    radius : px around the arg-max that count

    Returns
    -------
    (2,) float32 ``(row, col)``
    """
    h = jnp.asarray(heatmap, jnp.float32)
    peak = jnp.max(h)
    idx = jnp.argmax(h)
    pr, pc = idx // h.shape[1], idx % h.shape[1]
    rows = jnp.arange(h.shape[0])[:, None]
    cols = jnp.arange(h.shape[1])[None, :]
    inside = (rows - pr) ** 2 + (cols - pc) ** 2 <= radius**2
    floor = jnp.minimum(jnp.min(h), 0.0)
    weights = jnp.where(inside, jnp.square(jax.nn.relu(h - floor - threshold * (peak - floor))), 0.0)
    return _weighted_com(weights, jnp.asarray(frame_center(h.shape), jnp.float32))


def _thresholded_com(x: jax.Array, threshold: float, blur: float) -> tuple[jax.Array, jax.Array]:
    """Thresholded centre of mass and an estimate of the bright disk's radius."""
    sm = gaussian_filter(x, blur) if blur > 0 else x
    level = threshold * jnp.max(sm)
    weights = jax.nn.relu(x - level)
    c = _weighted_com(weights, jnp.asarray(frame_center(x.shape), jnp.float32))
    h, w = x.shape
    dr = jnp.arange(h, dtype=jnp.float32)[:, None] - c[0]
    dc = jnp.arange(w, dtype=jnp.float32)[None, :] - c[1]
    total = jnp.maximum(weights.sum(), 1e-30)
    # Two estimates, each robust where the other is not; the smaller wins (a mask too
    # small costs only shot noise, one too large lets other features slow convergence):
    # the second moment of the weights (a uniform disk has <d^2> = r^2 / 2), which a
    # hot pixel far away inflates, and the area above the level, which it barely does.
    r_moment = jnp.sqrt(2.0 * (weights * (dr * dr + dc * dc)).sum() / total)
    r_area = jnp.sqrt(jnp.sum(sm > level).astype(jnp.float32) / jnp.pi)
    return c, jnp.maximum(jnp.minimum(r_moment, r_area), 1.0)


#: Pixels at the frame's maximum that make a plateau: a saturated (flat-topped) disk.
PLATEAU_PIXELS = 12
#: px beyond a plateau's radius that the masked centre of mass counts (its edge).
PLATEAU_MARGIN = 5.0


def _plateau(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A flat top of the frame: ``(found, centroid, radius of a disk of its area)``.

    A saturated direct disk (a counter at its limit) is a plateau of at least
    :data:`PLATEAU_PIXELS` pixels at the maximum (to float rounding; a filter erodes
    the plateau but does not move it). Its counts say nothing beyond its extent, while
    the bright diffuse scattering around it, which a saturating exposure makes common,
    pulls a thresholded centre of mass and inflates its radius estimate."""
    top = jnp.max(x)
    flat = x >= top * (1.0 - 1e-5)
    n = flat.sum()
    centroid = _weighted_com(flat.astype(jnp.float32), jnp.asarray(frame_center(x.shape), jnp.float32))
    radius = jnp.sqrt(n.astype(jnp.float32) / jnp.pi)
    # compact: nine tenths of it within 2 px of the disk of its area (saturated hot
    # pixels scattered over the detector are no plateau)
    h, w = x.shape
    d2 = (jnp.arange(h, dtype=jnp.float32)[:, None] - centroid[0]) ** 2 + (jnp.arange(w, dtype=jnp.float32)[None, :] - centroid[1]) ** 2
    compact = jnp.sum(flat & (d2 <= (radius + 2.0) ** 2)) >= 0.9 * n
    # a counter's limit is a whole count above 1 (unit-peak noise-free test frames are no saturation)
    counter = (top >= 2.0) & (jnp.abs(top - jnp.round(top)) < 1e-3)
    return counter & (n >= PLATEAU_PIXELS) & compact, centroid, radius


def com_center(
    frame: jax.Array,
    threshold: float = 0.5,
    blur: float = 1.0,
    radius: float | jax.Array | None = None,
    mask_scale: float = 1.4,
    iterations: int = 3,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Centre of mass of the direct disk, masked to it and iterated (classical practice).

    1. Start: the thresholded centre of mass, weights ``max(I - threshold * M, 0)``
       with ``M`` the maximum of the frame blurred by ``blur`` px (so one hot pixel
       does not set the level). It finds the bright direct disk, but throws away the
       counts below the level, which doubles its shot noise at ``threshold=0.5``.
    2. ``iterations`` times: the plain centre of mass of ``max(I, 0)`` inside a soft
       disk mask of radius ``mask_scale * radius`` about the previous estimate (1 px
       linear taper, so the estimate is continuous in the centre and in ``I``). Every
       count of the direct disk weighs in (the shot-noise limit of a centre of mass),
       while the Bragg disks, the diffuse background and hot pixels outside the mask
       do not. A pattern symmetric about ``c`` has ``c`` as the fixed point; with the
       disk wholly inside the mask one step reaches it.

    ``radius`` is the direct disk's radius in px; by default it is estimated per
    frame, as the smaller of ``sqrt(2 <d^2>)`` of the thresholded weights (exact for a
    uniform disk) and ``sqrt(area / pi)`` of the blurred frame above the level. ``iterations=0`` gives the thresholded centre of
    mass alone. jit-able, vmap-able and differentiable in the image.

    A saturated direct disk (a compact flat top of at least :data:`PLATEAU_PIXELS`
    pixels at the frame's maximum: a counter at its limit) starts the iterations at
    the plateau's centroid with a mask :data:`PLATEAU_MARGIN` px beyond the plateau's
    radius, since the bright diffuse scattering that comes with such exposures pulls
    both the thresholded start and its radius (on a real Merlin scan: 4.2 px -> 0.20 px).

    ``valid`` (H, W), 1 = good, 0 = masked (a beam stop, dead or hot pixels): masked
    pixels count as 0, and each step weighs a pixel by ``valid(p) * valid(2c - p)``
    about the previous estimate (:func:`~prenet_jax.ops.mirrored_valid`), so that only
    pixels whose mirror image is also seen count: the weights stay centrosymmetric
    about the true centre, and a shadow over part of the disk biases nothing. The
    start (thresholded, unmirrored) is then biased towards the unshadowed side, so
    ``iterations + 5`` steps are taken to walk back from it.

    Returns
    -------
    (2,) float32 ``(row, col)``
    """
    x = jnp.asarray(frame, jnp.float32)
    if valid is not None:
        x = x * valid
    c, r_est = _thresholded_com(x, threshold, blur)
    if iterations <= 0:
        return c
    if valid is not None:
        iterations += 5
    r = r_est if radius is None else jnp.asarray(radius, jnp.float32)
    h, w = x.shape
    r_mask = mask_scale * jnp.clip(r, 1.0, float(max(h, w)))
    if radius is None:
        # A saturated disk: start at its plateau and mask to the plateau and 5 px beyond,
        # its edge. Measured on a real Merlin scan (6-bit counter, 1,950 pixels at 63,
        # bright diffuse lobes), against a circle fit of the plateau's edge: 4.2 px ->
        # 0.20 px on the frames as the step sees them (the Gaussian filter's output),
        # 0.86 px raw; on noise-free disks (flat tops too) 2e-4 px, as exact as before.
        flat, cp, rp = _plateau(x)
        c = jnp.where(flat, cp, c)
        r_mask = jnp.where(flat, rp + PLATEAU_MARGIN, r_mask)
    rows = jnp.arange(h, dtype=jnp.float32)[:, None]
    cols = jnp.arange(w, dtype=jnp.float32)[None, :]
    xp = jax.nn.relu(x)
    for _ in range(iterations):
        dr, dc = rows - c[0], cols - c[1]
        mask = jnp.clip(r_mask + 0.5 - jnp.sqrt(dr * dr + dc * dc + 1e-12), 0.0, 1.0)
        if valid is not None:
            mask = mask * valid * mirrored_valid(valid, c)
        wts = xp * mask
        total = wts.sum()
        safe = jnp.where(total > 0, total, 1.0)
        # Moments about the current estimate: no float32 cancellation on large frames.
        step = jnp.stack([(wts * dr).sum(), (wts * dc).sum()]) / safe
        c = jnp.where(total > 0, c + step, c)
    return c


def _upsampled_dft(spectrum: jax.Array, shape: tuple[int, int], origin: jax.Array, n: int, step: float) -> jax.Array:
    """Values of the inverse DFT of ``spectrum`` on an ``n x n`` grid of spacing ``step``.

    Evaluates the band-limited continuation of the autoconvolution between
    integer lags exactly, by two small matrix products (no large zero-padded FFT).
    """
    hp, wp = shape
    ky = jnp.fft.fftfreq(hp)  # cycles per pixel
    kx = jnp.fft.fftfreq(wp)
    ys = origin[0] + step * (jnp.arange(n) - (n - 1) / 2)
    xs = origin[1] + step * (jnp.arange(n) - (n - 1) / 2)
    ey = jnp.exp(2j * jnp.pi * ys[:, None] * ky[None, :])  # (n, hp)
    ex = jnp.exp(2j * jnp.pi * kx[:, None] * xs[None, :])  # (wp, n)
    hi = jax.lax.Precision.HIGHEST
    return jnp.real(jnp.matmul(jnp.matmul(ey, spectrum, precision=hi), ex, precision=hi))


def _parabolic(vm: jax.Array, v0: jax.Array, vp: jax.Array) -> jax.Array:
    den = vm - 2 * v0 + vp
    return jnp.where(den < 0, 0.5 * (vm - vp) / jnp.where(den < 0, den, -1.0), 0.0).clip(-0.5, 0.5)


def friedel_center(frame: jax.Array, upsample: int = 16, valid: jax.Array | None = None, min_overlap: float = 0.25) -> jax.Array:
    """Centre from Friedel symmetry: the autoconvolution peaks at twice the centre.

    A pattern symmetric about ``c`` has an autoconvolution ``(I * I)(s)`` that
    peaks at ``s = 2c``. The autoconvolution is computed by a zero-padded FFT (no
    wrap-around), its integer peak is refined on an ``upsample``-times finer
    grid by an exact DFT, then by a parabola, and halved.

    ``valid`` (H, W), 1 = good, 0 = masked: the masked, normalised autoconvolution
    ``(xv * xv)(s) / ((x^2 v) * v)(s)``: the sum of products over the pixel pairs
    ``(p, s - p)`` both seen, over the energy of the seen pixels whose partner is also
    seen. By Cauchy-Schwarz it is at most 1, reached where the seen pixels match their
    partners, i.e. at ``s = 2c`` whatever is masked (a masked normalised correlation, as
    Padfield's). Lags where fewer than ``min_overlap`` of the energy is paired are left
    out; numerator and denominator are refined on the fine grid the same way.
    """
    x = jnp.asarray(frame, jnp.float32)
    h, w = x.shape
    shape = (2 * h, 2 * w)
    if valid is not None:
        x = x * valid
    f = jnp.fft.fft2(x - 0.0, s=shape)
    spec = f * f
    auto = jnp.real(jnp.fft.ifft2(spec))
    step = 1.0 / upsample
    n = 2 * upsample + 3  # covers +-1 lag around the integer peak
    if valid is not None:
        spec_v = jnp.fft.fft2(x * x, s=shape) * jnp.fft.fft2(jnp.asarray(valid, jnp.float32), s=shape)
        energy = jnp.real(jnp.fft.ifft2(spec_v))
        enough = energy > min_overlap * jnp.max(energy)
        auto = jnp.where(enough, auto / jnp.where(enough, energy, 1.0), -jnp.inf)
    idx = jnp.argmax(auto)
    peak = jnp.stack([idx // shape[1], idx % shape[1]]).astype(jnp.float32)
    fine = _upsampled_dft(spec, shape, peak, n, step)
    if valid is not None:
        fine = fine / jnp.maximum(_upsampled_dft(spec_v, shape, peak, n, step), 1e-3 * jnp.max(energy))
    return (peak + step * _fine_offset(fine)) / 2.0


def _fine_offset(fine: jax.Array) -> jax.Array:
    """``(2,)`` position of the maximum of the ``n x n`` fine grid about its centre, in grid
    steps: the largest sample refined by a parabola along each axis."""
    n = fine.shape[0]
    j = jnp.argmax(fine)
    jr = jnp.clip(j // n, 1, n - 2)
    jc = jnp.clip(j % n, 1, n - 2)
    dr = _parabolic(fine[jr - 1, jc], fine[jr, jc], fine[jr + 1, jc])
    dc = _parabolic(fine[jr, jc - 1], fine[jr, jc], fine[jr, jc + 1])
    return jnp.stack([jr + dr, jc + dc]).astype(jnp.float32) - (n - 1) / 2


def shift_between(frame: jax.Array, template: jax.Array, upsample: int = 8) -> jax.Array:
    """The shift ``(d_row, d_col)`` that moves ``template`` onto ``frame``: the peak of
    their cross-correlation ``sum_p frame(p) template(p - s)`` (zero-padded by half a
    frame, so shifts up to a quarter of the frame do not wrap), refined like
    :func:`friedel_center`: on an ``upsample``-times finer grid by an exact DFT, then by
    a parabola. For a noisy frame and a clean template this is the matched filter."""
    x = jnp.asarray(frame, jnp.float32)
    t = jnp.asarray(template, jnp.float32)
    h, w = x.shape
    shape = (h + h // 2, w + w // 2)
    spec = jnp.fft.fft2(x, s=shape) * jnp.conj(jnp.fft.fft2(t, s=shape))
    corr = jnp.real(jnp.fft.ifft2(spec))
    idx = jnp.argmax(corr)
    peak = jnp.stack([idx // shape[1], idx % shape[1]]).astype(jnp.float32)
    step = 1.0 / upsample
    lag = peak + step * _fine_offset(_upsampled_dft(spec, shape, peak, 2 * upsample + 3, step))
    size = jnp.asarray(shape, jnp.float32)
    return jnp.where(lag > size / 2, lag - size, lag)  # lags past half the padded frame are negative


def direct_beam_found(frame: jax.Array) -> jax.Array:
    """Whether ``frame`` (H, W) shows a direct beam: a compact spot clearly brighter than
    the frame on average. A frame without one (the beam blanked or off the detector,
    flat noise, an EBSD or Kikuchi pattern of broad bands) has no beam centre to find,
    and any estimator returns an arbitrary point.

    The test: the brightest 5x5 local mean ``p`` is at least :data:`BEAM_CONTRAST`
    (2.5) times the frame's mean ``m`` (a uniform disk covering a fraction ``f`` of the
    frame gives ``p / m = 1 / f``: disks up to 40 % of the frame pass; smooth EBSD
    patterns and flat frames give 1-2). For integer-valued frames (counts) the 5x5
    sum at the peak must also exceed what flat Poisson noise of the same mean reaches
    somewhere among the frame's pixels, ``lam + 5 sqrt(lam) + 5`` with ``lam = 25 m``
    (flat noise at 0.1 counts a pixel reaches a 5x5 sum of about 11 against 15 here; a
    direct disk of radius 10 px holding 100 electrons reaches about 8 and passes only
    with a little more dose: below that, a frame is too dark to tell).

    Returns
    -------
    () bool
    """
    x = jnp.maximum(jnp.where(jnp.isfinite(frame), jnp.asarray(frame, jnp.float32), 0.0), 0.0)
    box = jax.lax.reduce_window(x, 0.0, jax.lax.add, (5, 5), (1, 1), "SAME")
    peak = jnp.max(box)
    m = jnp.mean(x)
    lam = 25.0 * m
    counted = jnp.all(x == jnp.round(x))
    significant = jnp.where(counted, peak > lam + 5.0 * jnp.sqrt(lam) + 5.0, True)
    return (m > 0) & (peak >= BEAM_CONTRAST * 25.0 * m) & significant
