"""Denoising with the scan as context: each frame averaged with its aligned scan neighbours
and blurred, both widths chosen per frame by the frame's own Poisson risk.

A 4D-STEM scan is not a pile of unrelated frames: neighbouring probe positions see nearly
the same pattern, moved by the descan. So each frame ``y_i`` is estimated as::

    f_i = G_sigma ( sum_k w_k T_ik y_k ),   w_k = exp(-|k - i|^2 / 2 lambda^2) / sum (k in the window)

over the ``(2 radius + 1)^2`` scan positions ``k`` around ``i`` (those inside the scan),
``T_ik`` the bilinear translation that moves frame ``k``'s pattern onto frame ``i``'s
(the descan between them, from each frame's registration against the scan's mean
pattern, :func:`scan_centers`), and ``G_sigma`` the normalised Gaussian of the
frame-by-frame denoiser (:mod:`._gaussian`). ``lambda = 0`` is the frame alone, and
``sigma = 0`` no blur: the frame-by-frame risk-chosen Gaussian and the raw frame are
members of the family. Uniform boxes (3 x 3, 5 x 5) are windows too (:data:`SCAN_WIDTHS`),
and with ``solve`` so is the combination of the window whose weights minimise the risk
(:func:`_solved_combination`).

The pair ``(lambda, sigma)`` is chosen per frame, from :data:`SCAN_WIDTHS` x
:data:`prenet_jax.pipeline.SIGMA_GRID`, as the one whose estimated mean squared error
against the frame's noise-free expectation is smallest. For fixed alignments ``f_i`` is
linear in the frames, and pixel ``n`` of ``y_i`` enters it only through its own term, with
the weight ``w_i h_nn`` (``h_nn`` the blur's centre weight): the neighbours are other
electrons, independent of it. So the exact Poisson unbiased risk (PURE, Poisson-Gaussian
with read noise) is::

    risk_i = mean_n [ (f_i - y_i)_n^2 + (2 w_i h_nn - 1) v_n ]

with ``v_n`` the unbiased noise variance of the frame's pixel (``g y_n + c``,
:func:`prenet_jax.pipeline.noise_variance`). The alignments depend on the data only through
the beam centres, which one pixel moves by about one part in the frame's electron count;
that dependence is neglected. Where the neighbours differ (a crystal's Bragg intensities
change from one atomic column to the next) the averaged frame carries that difference as a
bias in ``||f - y||^2``, and the frame picks a narrower window: the choice costs no
assumption about how similar neighbours are.

Assumptions: those of the risk (counted electrons or a measured gain, independent pixels;
``denoise_risk`` checks them), and that the scan axes are the cube's leading axes in scan
order. ``benchmarks/denoise_scan.py`` measures its speed and memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..ops import translate
from ._gaussian import SIGMA_GRID, _grid_filters, noise_model

__all__ = ["SCAN_RADIUS", "SCAN_WIDTHS", "ScanDenoised", "ScanDenoiser", "noise_check", "scan_centers", "scan_gaussian", "scan_template"]

#: Scan windows each frame chooses from (scan steps): 0 the frame alone, lambda > 0 a
#: Gaussian of width lambda, -r a uniform box of radius r.
SCAN_WIDTHS = (0.0, 0.5, 0.75, 1.0, 1.5, 2.5, -1.0, -2.0)
#: Variance/mean of integer frames the scan denoiser accepts as counts (:func:`noise_check`).
SCAN_GAIN_RANGE = (0.6, 2.0)
#: Half-width of the scan window (scan steps): a 5 x 5 window.
SCAN_RADIUS = 2
#: Largest descan (px) between frames of one window that the alignment follows; beyond it,
#: the shift is clipped (the risk then sees the misalignment and narrows the window).
MAX_ALIGN_PX = 8
#: Scatter (px, median distance to the window's median) of the centre estimates in a
#: scan window beyond which the window is not aligned (:func:`scan_centers`).
RELIABLE_SPREAD_PX = 1.0


@dataclasses.dataclass(frozen=True)
class ScanDenoised:
    """What :func:`scan_gaussian` returns.

    Attributes
    ----------
    frames : (Rx, Ry, H, W) float32, the denoised counts
    width : (Rx, Ry) the window each frame chose (:data:`SCAN_WIDTHS`: 0 alone, lambda > 0
        a Gaussian, -r a box of radius r; inf the solved weights)
    sigma : (Rx, Ry) the blur each frame chose (px; 0 = none)
    risk : (Rx, Ry) the estimated MSE per pixel of the chosen estimate (counts^2)
    noisy_risk : (Rx, Ry) the estimated MSE of the raw frame (its mean noise variance)
    centers : (Rx, Ry, 2) the positions the alignment used (row, col; relative to the
        scan's mean pattern; NaN: the frame's window was not aligned)
    """

    frames: np.ndarray
    width: np.ndarray
    sigma: np.ndarray
    risk: np.ndarray
    noisy_risk: np.ndarray
    centers: np.ndarray

    @property
    def psnr_gain(self) -> float:
        """10 log10 of the raw frames' estimated MSE over the denoised frames' (dB)."""
        return float(10.0 * np.log10(np.mean(self.noisy_risk) / max(float(np.mean(self.risk)), 1e-30)))


@jax.jit
def _register(frames, template):
    from ..ops import shift_between

    return jax.vmap(shift_between, in_axes=(0, None))(frames, template)


@jax.jit
def _moved_back(frames, shifts):
    """``(B, H, W)`` frames moved by ``-shifts``: onto the template they were registered to."""
    return jax.vmap(lambda f, s: translate(f, -s))(frames, shifts)


def _registered(flat: np.ndarray, template: np.ndarray, batch: int) -> np.ndarray:
    t = jnp.asarray(template, jnp.float32)
    return np.concatenate([np.asarray(_register(jnp.asarray(flat[i : i + batch], jnp.float32), t)) for i in range(0, len(flat), batch)])


def _median_rule(raw: np.ndarray) -> np.ndarray:
    """The reliability rule of :func:`scan_centers` on ``(rows, Ry, 2)`` raw shifts
    (``nan`` marks a window that is not aligned)."""
    from scipy.ndimage import median_filter

    size = (2 * SCAN_RADIUS + 1,) * 2
    med = np.stack([median_filter(raw[..., k], size=size, mode="nearest") for k in range(2)], -1)
    dev = np.linalg.norm(raw - med, axis=-1)
    spread = median_filter(dev, size=size, mode="nearest")
    out = np.where((dev <= np.maximum(3.0 * spread, 0.5))[..., None], raw, med)
    out[spread > RELIABLE_SPREAD_PX] = np.nan
    return out


def scan_template(frames, batch: int = 64) -> np.ndarray:
    """The mean pattern to register frames against: the mean of ``frames`` ``(N, H, W)``
    (a sample across the scan), then the mean of the same frames aligned to it."""
    flat = np.asarray(frames)
    template = flat.astype(np.float64).mean(0)
    first = _registered(flat, template, batch)
    parts = [
        np.asarray(_moved_back(jnp.asarray(flat[i : i + batch], jnp.float32), jnp.asarray(first[i : i + batch])))
        for i in range(0, len(flat), batch)
    ]
    return np.concatenate(parts).astype(np.float64).mean(0)


def scan_centers(cube, batch: int = 64, template_frames: int = 1024) -> np.ndarray:
    """``(Rx, Ry, H, W)`` counts -> ``(Rx, Ry, 2)`` where each frame's pattern sits,
    relative to the scan's mean pattern (only differences between frames are used):
    the cross-correlation peak of the frame with a template (:func:`prenet_jax.ops.shift_between`,
    the matched filter of a noisy frame; :func:`scan_template` of up to
    ``template_frames`` frames).

    It follows the whole pattern (disks, rings, halo), so it works for amorphous rings
    and weak beams where a centre of mass of the direct disk fails (measured up to 10 px
    off there), and it is not smoothed: a frame's own jitter is real and is tracked
    (0.1-0.4 px from the truth on held-out scans at 1e3-1e4 electrons, against 0.5 px
    of jitter). A frame more than ``3 x`` its window's scatter (at least 0.5 px) from
    the window's median takes the median; where the estimates of a window scatter by
    more than :data:`RELIABLE_SPREAD_PX`, the window is not aligned (NaN here; the
    denoiser leaves those frames' neighbours where they are), and the risk decides how
    much the unaligned neighbours are worth."""
    cube = np.asarray(cube)
    rx, ry = cube.shape[:2]
    flat = cube.reshape(rx * ry, *cube.shape[2:])
    pick = np.linspace(0, len(flat) - 1, min(len(flat), template_frames)).round().astype(int)
    template = scan_template(flat[pick], batch)
    return _median_rule(_registered(flat, template, batch).reshape(rx, ry, 2).astype(np.float64))


def noise_check(frames, n: int = 64) -> str:
    """Why the risk cannot judge the scan denoiser's choices on ``frames`` ``(N, H, W)``
    (correlated pixels, or counts whose variance is not their mean:
    :func:`prenet_jax.pipeline.estimate_noise` on up to ``n`` of them), or ``""``.

    Integer frames pass with a measured variance/mean inside :data:`SCAN_GAIN_RANGE`,
    wider than ``denoise_risk``'s: on the held-out raster scans, Poisson counts at 1e4
    electrons measured 1.5 (sharp Bragg disks inflate the residuals the measure uses),
    while the refusals that matter lie further out (a Merlin 6-bit scan 0.43, every
    electron counted 3 times 3.0)."""
    from ._risk import CORRELATION_TOLERANCE, INDEPENDENT_CORRELATION, estimate_noise

    frames = np.asarray(frames)
    pick = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), n)).round().astype(int))
    noise = estimate_noise(frames[pick])
    c = noise["checks"]
    rho = c.get("neighbour_correlation", math.nan)
    independent = math.isnan(rho) or abs(rho - INDEPENDENT_CORRELATION) <= CORRELATION_TOLERANCE
    lo, hi = SCAN_GAIN_RANGE
    if noise["reason"] and c["integer"] and independent and lo <= c["measured_gain"] <= hi:
        return ""
    return noise["reason"]


def _offsets(radius: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(-radius, radius + 1) for b in range(-radius, radius + 1)]


def _shift_frames(frames: jax.Array, shift: jax.Array) -> jax.Array:
    """``(B, H, W)`` frames moved by ``(B, 2)`` shifts (px, ``|shift| <= MAX_ALIGN_PX``):
    ``out(q) = frame(q - shift)``, bilinear, zero outside. Four integer-offset slices of a
    padded frame per shift: no gather over the frame."""
    p = MAX_ALIGN_PX + 1
    h, w = frames.shape[-2:]
    padded = jnp.pad(frames, ((0, 0), (p, p), (p, p)))
    base = jnp.floor(shift)
    frac = shift - base
    base = base.astype(jnp.int32)

    def one(img, b, t):
        out = jnp.zeros((h, w), img.dtype)
        for dr, wr in ((0, 1.0 - t[0]), (1, t[0])):
            for dc, wc in ((0, 1.0 - t[1]), (1, t[1])):
                # out(q) = img(q - shift): the sample at q - b - (dr, dc) weighs (1-t) or t
                sl = jax.lax.dynamic_slice(img, (p - b[0] - dr, p - b[1] - dc), (h, w))
                out = out + wr * wc * sl
        return out

    return jax.vmap(one)(padded, base, frac)


def _aligned_window(block, valid, centers, radius: int):
    """The scan window of every inner frame of a block: ``(B, K, H, W)`` the ``K =
    (2 radius + 1)^2`` neighbours moved onto the frame's beam (the frame itself first,
    then by distance; zero outside the scan), ``(B, K)`` which are inside the scan, and
    ``(K,)`` their squared scan distances."""
    r = radius
    rb, ry = block.shape[0] - 2 * r, block.shape[1] - 2 * r
    h, w = block.shape[-2:]
    own_c = centers[r : r + rb, r : r + ry].reshape(-1, 2)
    stack, masks, dist = [], [], []
    for a, b in sorted(_offsets(r), key=lambda o: (o[0] ** 2 + o[1] ** 2, o)):
        nb = block[r + a : r + a + rb, r + b : r + b + ry].reshape(-1, h, w)
        m = valid[r + a : r + a + rb, r + b : r + b + ry].reshape(-1).astype(block.dtype)
        if (a, b) != (0, 0):
            shift = jnp.clip(own_c - centers[r + a : r + a + rb, r + b : r + b + ry].reshape(-1, 2), -MAX_ALIGN_PX, MAX_ALIGN_PX)
            nb = _shift_frames(nb, shift)
        stack.append(nb * m[:, None, None])
        masks.append(m)
        dist.append(float(a * a + b * b))
    return jnp.stack(stack, 1), jnp.stack(masks, 1), np.asarray(dist)


def _window(lam: float, dist: np.ndarray) -> np.ndarray:
    """Kernel values at squared scan distances ``dist``: ``lam > 0`` a Gaussian of width
    ``lam`` steps, ``lam < 0`` a uniform box of radius ``-lam`` steps, 0 the frame alone."""
    if lam < 0:
        return (dist <= lam * lam + 1e-9).astype(np.float32)
    if lam == 0:
        return (dist == 0).astype(np.float32)
    return np.exp(-0.5 * dist / lam**2).astype(np.float32)


def _solved_combination(n, m, own, v, g):
    """The combination ``f = sum_k w_k n_k`` of least PURE (unblurred): ``w = G^-1 b``
    with ``G`` the window's Gram matrix and ``b_k = <n_k, y> - sum v [k = 0]`` (the
    frame's noise energy taken off its own correlation). Returns ``f`` and its
    estimated risk ``(B,)``: the weights depend on the frame's own noise, so the
    divergence carries, besides ``w_0 sum v``, the first-order terms of that
    dependence, ``(1 - w_0) tr(G^-1 M) + (G^-1 q)_0`` with ``M = sum_n v_n a_n a_n^T``
    and ``q = sum_n v_n (y_n - g - f_n) a_n`` (``a_n`` the window's values at pixel
    ``n``); left out, the fitted weights would look better than they are."""
    hi = jax.lax.Precision.HIGHEST
    k = n.shape[1]
    gram = jnp.einsum("bkhw,blhw->bkl", n, n, precision=hi)
    t = jnp.sum(v, axis=(-2, -1))
    e0 = (jnp.arange(k) == 0).astype(own.dtype)
    rhs = (gram[:, :, 0] - t[:, None] * e0) * m
    eye = jnp.eye(k, dtype=own.dtype)
    scale = jnp.trace(gram, axis1=1, axis2=2)[:, None, None] / k
    gm = gram * (m[:, :, None] * m[:, None, :]) + eye * ((1.0 - m[:, :, None]) + 1e-6) * scale
    inv = jnp.linalg.inv(gm)
    wts = jnp.einsum("bkl,bl->bk", inv, rhs, precision=hi) * m
    f = jnp.einsum("bk,bkhw->bhw", wts, n, precision=hi)
    mv = jnp.einsum("bkhw,blhw->bkl", n * v[:, None], n, precision=hi)
    q = jnp.einsum("bhw,bkhw->bk", v * (own - g[:, None, None] - f), n, precision=hi)
    w0 = wts[:, 0]
    div = w0 * t + (1.0 - w0) * jnp.einsum("bkl,blk->b", inv * (m[:, :, None] * m[:, None, :]), mv, precision=hi)
    div = div + jnp.einsum("bl,bl->b", inv[:, 0], q * m, precision=hi)
    px = own.shape[-1] * own.shape[-2]
    risk = jnp.mean((f - own) ** 2, axis=(-2, -1)) + (2.0 * div - t) / px
    return f, risk


@functools.partial(jax.jit, static_argnames=("radius", "widths", "sigmas", "solve"))
def _denoise_rows(block, valid, centers, *, radius: int, widths: tuple, sigmas: tuple, solve: bool):
    """One block of scan rows. ``block`` ``(Rb + 2r, Ry + 2r, H, W)`` frames zero-padded by
    ``r = radius`` scan steps on every side, ``valid`` ``(Rb + 2r, Ry + 2r)`` which are
    inside the scan, ``centers`` ``(Rb + 2r, Ry + 2r, 2)``. Returns for the ``Rb x Ry``
    inner frames, flat: (denoised frames, the window chosen (:class:`ScanDenoised`'s
    ``width``), sigma, risk, noisy risk)."""
    n, m, dist = _aligned_window(block, valid, centers, radius)
    own = n[:, 0]
    g, c0 = noise_model(own)
    v = g[:, None, None] * own + c0[:, None, None]
    mean_v = jnp.mean(v, axis=(-2, -1))
    best = best_risk = best_w = best_s = None

    def keep(y, risk, width, s):
        nonlocal best, best_risk, best_w, best_s
        if best is None:
            best, best_risk = y, risk
            best_w, best_s = jnp.full(risk.shape, width, jnp.float32), jnp.full(risk.shape, s, jnp.float32)
            return
        better = risk < best_risk  # ties keep the earlier: the narrower window, the smaller blur
        best = jnp.where(better[:, None, None], y, best)
        best_risk = jnp.where(better, risk, best_risk)
        best_w = jnp.where(better, width, best_w)
        best_s = jnp.where(better, s, best_s)

    for lam in widths:
        ks = _window(lam, dist)
        wk = ks[None, :] * m
        norm = wk.sum(1)
        avg = jnp.einsum("bk,bkhw->bhw", wk / norm[:, None], n) if lam != 0 else own
        w0 = 1.0 / norm  # the frame's own weight (its kernel value is 1)
        for s, y, c in _grid_filters(avg, sigmas):
            keep(y, jnp.mean((y - own) ** 2 + (2.0 * w0[:, None, None] * c - 1.0) * v, axis=(-2, -1)), lam, s)
    if solve:
        f, risk = _solved_combination(n, m, own, v, g)
        keep(f, risk, math.inf, 0.0)
    # solved weights can be negative, so can their sum: intensities cannot (clipping only
    # moves the estimate toward the truth, so the risk stays an estimate from above)
    return jnp.maximum(best, 0.0), best_w, best_s, best_risk, mean_v


class ScanDenoiser:
    """The scan denoiser on a scan read row by row (a file too large for memory):
    :meth:`rows` denoises scan rows ``[r0, r1)``, reading only those rows and
    ``2 * radius`` more on each side. Memory: about ``frames_per_block`` frames times
    the window.

    Parameters
    ----------
    read_rows : ``read_rows(r0, r1)`` -> ``(r1 - r0, Ry, H, W)`` counts of scan rows
        ``r0 .. r1 - 1``
    scan : ``(Rx, Ry)``
    template : the pattern to align by (:func:`scan_template`); None: no alignment
    centers : ``(Rx, Ry, 2)`` fixed alignment positions instead (NaN: not aligned)
    radius, widths, sigmas, solve : as :func:`scan_gaussian`
    """

    def __init__(
        self,
        read_rows,
        scan,
        template=None,
        centers=None,
        *,
        radius=SCAN_RADIUS,
        widths=SCAN_WIDTHS,
        sigmas=SIGMA_GRID,
        solve=True,
        batch=64,
    ):
        self.read_rows, (self.rx, self.ry) = read_rows, (int(scan[0]), int(scan[1]))
        self.widths, self.sigmas = tuple(float(x) for x in widths), tuple(float(x) for x in sigmas)
        if 0.0 not in self.widths or 0.0 not in self.sigmas or min(self.sigmas) < 0:
            raise ValueError("widths and sigmas must include 0 (the frame alone, unblurred); sigmas must be >= 0")
        self.radius, self.solve, self.batch = int(radius), bool(solve), int(batch)
        self.template = None if template is None else jnp.asarray(template, jnp.float32)
        if centers is not None:
            centers = np.asarray(centers, np.float64)
            if centers.shape != (self.rx, self.ry, 2):
                raise ValueError(f"centers must be (Rx, Ry, 2) = {(self.rx, self.ry, 2)}, got {centers.shape}")
        self.centers = centers
        self._raw: dict[int, np.ndarray] = {}  # registered shifts of the rows seen (small)

    def _raw_rows(self, r0: int, r1: int, frames: np.ndarray, f0: int) -> np.ndarray:
        """Registered shifts of rows ``r0..r1-1`` (``frames`` holds rows from ``f0``)."""
        need = [r for r in range(r0, r1) if r not in self._raw]
        if need:
            sel = frames[need[0] - f0 : need[-1] + 1 - f0].reshape(-1, *frames.shape[-2:])
            got = _registered(sel, self.template, self.batch).reshape(len(need), self.ry, 2)
            self._raw.update({r: got[i] for i, r in enumerate(need)})
        return np.stack([self._raw[r] for r in range(r0, r1)])

    def _window_centers(self, a: int, b: int, frames: np.ndarray, f0: int) -> np.ndarray:
        """Alignment positions of rows ``a..b-1`` (within the scan), NaN-free: a
        window that is not aligned gets one common value."""
        if self.centers is not None:
            c = self.centers[a:b].copy()
        elif self.template is None:
            return np.zeros((b - a, self.ry, 2))
        else:
            lo, hi = max(0, a - self.radius), min(self.rx, b + self.radius)  # the median rule's window
            c = _median_rule(self._raw_rows(lo, hi, frames, f0))[a - lo : b - lo]
        return np.where(np.isnan(c), 0.0, c)  # nan - nan pairs give shift 0: not aligned

    def rows(self, r0: int, r1: int):
        """Denoise rows ``[r0, r1)``: ``(frames (r1-r0, Ry, H, W) float32, maps (4, r1-r0, Ry))``
        with maps (window, sigma, risk, noisy risk) as :class:`ScanDenoised`."""
        r = self.radius
        lo_c = max(0, r0 - 2 * r) if self.template is not None and self.centers is None else max(0, r0 - r)
        hi_c = min(self.rx, r1 + 2 * r) if self.template is not None and self.centers is None else min(self.rx, r1 + r)
        frames = np.asarray(self.read_rows(lo_c, hi_c), np.float32)
        if not np.all(np.isfinite(frames)):
            raise ValueError("the scan denoiser: the frames hold NaN or Inf; mask or replace those pixels first")
        a, b = max(0, r0 - r), min(self.rx, r1 + r)
        c = self._window_centers(a, b, frames, lo_c)
        n = r1 - r0
        h, w = frames.shape[-2:]
        block = np.zeros((n + 2 * r, self.ry + 2 * r, h, w), np.float32)
        valid = np.zeros(block.shape[:2], bool)
        cen = np.zeros(block.shape[:2] + (2,), np.float32)
        block[a - r0 + r : b - r0 + r, r : r + self.ry] = frames[a - lo_c : b - lo_c]
        valid[a - r0 + r : b - r0 + r, r : r + self.ry] = True
        cen[a - r0 + r : b - r0 + r, r : r + self.ry] = c
        f, lam, s, risk, nr = _denoise_rows(
            jnp.asarray(block), jnp.asarray(valid), jnp.asarray(cen), radius=r, widths=self.widths, sigmas=self.sigmas, solve=self.solve
        )
        maps = np.stack([np.asarray(lam), np.asarray(s), np.asarray(risk), np.asarray(nr)]).reshape(4, n, self.ry)
        for row in [k for k in self._raw if k < r0 - 2 * r]:  # rows no later block needs
            del self._raw[row]
        return np.asarray(f).reshape(n, self.ry, h, w), maps


def scan_gaussian(
    cube,
    centers=None,
    *,
    radius: int = SCAN_RADIUS,
    widths=SCAN_WIDTHS,
    sigmas=SIGMA_GRID,
    frames_per_block: int = 32,
    progress: Callable[[int, int], None] | None = None,
    solve: bool = True,
    align: bool = True,
) -> ScanDenoised:
    """Denoise a scan ``(Rx, Ry, H, W)`` of counts with each frame's aligned scan neighbours
    (module docstring: the estimator, its risk and its assumptions).

    Parameters
    ----------
    cube : (Rx, Ry, H, W) counts (any real dtype; not modified)
    centers : (Rx, Ry, 2) positions (row, col) to align the frames by (NaN: leave a
        frame's neighbours unaligned); default :func:`scan_centers`
    radius : half-width of the scan window (scan steps)
    widths : the scan windows to choose from (:data:`SCAN_WIDTHS`; include 0)
    sigmas : the blurs to choose from (px; include 0)
    frames_per_block : about how many frames one compiled call denoises (whole scan rows)
    progress : called as ``progress(rows done, rows)`` after each block
    solve : also offer each frame the combination of its window of least risk (solved)
    align : False: neighbours as recorded (no descan between them)

    Returns
    -------
    :class:`ScanDenoised`
    """
    cube = np.asarray(cube)
    if cube.ndim != 4:
        raise ValueError(f"scan_gaussian wants a scan (Rx, Ry, H, W), got shape {cube.shape}: pass frames as a 4D cube")
    if not np.all(np.isfinite(cube)):
        raise ValueError("scan_gaussian: the scan holds NaN or Inf; mask or replace those pixels first")
    rx, ry, h, w = cube.shape
    reason = noise_check(cube.reshape(rx * ry, h, w))
    if reason:
        raise ValueError(
            f"scan_gaussian: {reason}; the risk that chooses each frame's window assumes counted electrons "
            "(Poisson, independent pixels). Use the frame-by-frame Gaussian (denoise_method 'gaussian') or none"
        )
    if centers is None and align:
        centers = scan_centers(cube)
    elif not align:
        centers = np.zeros((rx, ry, 2))
    den = ScanDenoiser(lambda a, b: cube[a:b], (rx, ry), centers=centers, radius=radius, widths=widths, sigmas=sigmas, solve=solve)
    rb = max(1, min(rx, frames_per_block // max(ry, 1)))
    out = np.empty((rx, ry, h, w), np.float32)
    maps = np.empty((4, rx, ry), np.float32)
    for r0 in range(0, rx, rb):
        r1 = min(rx, r0 + rb)
        out[r0:r1], maps[:, r0:r1] = den.rows(r0, r1)
        if progress is not None:
            progress(r1, rx)
    lam, sig, risk, noisy = maps
    return ScanDenoised(out, lam, sig, risk, noisy, np.asarray(den.centers))
