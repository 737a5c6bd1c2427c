"""How good is a denoiser on these frames? Its mean squared error, estimated without clean data.

:func:`denoise_risk` estimates ``mean((denoise(y) - E y) ** 2)`` (per pixel, in the
data's units squared, at the data's own dose) from the noisy frames ``y`` alone, by
Poisson's identity ``E[x_n g(y)] = E[y_n g(y - e_n)]`` for counts ``y ~ Poisson(x)``
(PURE, the Poisson unbiased risk estimate) and its mixed Poisson-Gaussian form.

Assumptions (checked on the data; where they fail the result says so, ``valid`` is
False, ``reason`` names the problem and ``mse`` is NaN, or with ``strict=True`` a
``ValueError`` is raised)
-------------------------------------------------------------------------------
- Pixels are independent given the signal (no filtering, interpolation, binning or
  charge sharing after counting). Checked: the residual of a pixel to the mean of its
  4 neighbours has a neighbour correlation of -0.40 for independent pixels (signal
  aside); a measured value off by more than ``CORRELATION_TOLERANCE`` fails.
- Each pixel is ``y = g Poisson(x / g) + N(0, read_noise^2)``: ``Var y = g E y +
  read_noise^2``. ``gain`` and ``read_noise`` are taken as given, or measured from
  the variance-vs-mean relation of the residuals above: their mean square over the
  dark half of the pixels and over the brightest tenth (ranked by the mean of the 4
  diagonal neighbours, which share no noise with the residual) against those pixels'
  mean, residuals beyond 3 standard deviations of the model left out (edges); where
  the frames' bright cores hold 20 electrons a pixel or more, the gain is the median
  of ``r^2 / level`` there instead (blind to structure). On 40 abTEM frames (Poisson,
  1e2-1e6 electrons) the measured gain of counts is 0.82-1.08 (the check accepts
  0.7-1.4), the read noise within 7 % of 0.5 counts; a known gain 3 comes out
  2.8-3.2 at 1e5-1e6 electrons but 1.0-4.3 at 1e2-1e4, where the read noise (2,
  measured within 4 %) is most of the variance and the gain matters little. Integer-valued data are
  taken to be counted electrons (``g = 1``, no read noise): measured ``g`` outside
  ``COUNTS_GAIN_RANGE`` (e.g. integers whose variance is 10x their mean,
  over-dispersed counts or detector units that are not electrons) fails unless
  ``gain=`` is passed.

The estimate
------------
With ``v_n = g y_n + read_noise^2`` (an unbiased estimate of pixel ``n``'s noise
variance) and ``f = denoise(y)``::

    risk = ||f - y||^2 + 2 sum_n v_n (f_n(y) - f_n(y - g e_n)) / g - sum_n v_n     (/ pixels)

which is the exact PURE for counts (``g = 1``, no read noise) and its first-order
PG-URE form with read noise, where the difference becomes a derivative (a step of
``0.1 read_noise``: at the counting step a median filter's estimate was 2x off). For a linear filter with centre weight
``h_nn`` (``centre_weight=``; a Gaussian's from :func:`gaussian_centre_weight`) the
difference is ``h_nn g`` exactly and the estimate costs one call. For any other
callable the middle sum is estimated by Monte Carlo: each probe perturbs a lattice of
pixels (spacing ``spacing``, one offset of the ``spacing^2``, all of them by default
so that every pixel is perturbed once) at once and sums ``b_n v_n (f_n(y) - f_n(y -
delta b))`` over the lattice, times ``spacing^2``. For counts ``b_n = 1`` and
``delta = g`` (the exact backward difference PURE asks for, at the pixels that are
not 0; a perturbed pixel's effect on its lattice neighbours, 4 px away, is a small
bias for filters wider than that: sparse counts perturb few); with read noise, which
perturbs every pixel, ``b_n`` are random signs, which cancel that cross-talk on
average. ``probes`` calls (plus one).

Measured (``benchmarks/denoise_risk.py``, 160 abTEM 256x256 frames, error of the
mean estimate against the true mean MSE): Poisson at 1e3 and 1e4 electrons per frame,
the exact linear PURE of Gaussians (sigma 0.5-4 px) within 0.8 %, the Monte-Carlo
estimate (16 probes, spacing 4) within 4.5 % for the same Gaussians and within 1.6 %
for a 3x3 median filter and the old sigma rule; with 0.5-count read noise (gain and
read noise measured) within 3.7 % (linear), 3.6 % (MC, Gaussians) and 5.8 % (median).
Chosen against the alternatives measured on 40 of the frames: random signs for
counts put the median filter 8-12 % and the old rule 10-20 % off at 1e3 (a forward
difference where PURE asks for a backward one); lattice spacing 8 or 16 with fewer
probes adds sampling noise (a 0.5 px Gaussian 2-17 % off); the counting step as the
difference with read noise put a median filter 56-107 % off.
``benchmarks/RESULTS.md`` gives the table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "COUNTS_GAIN_RANGE",
    "CORRELATION_TOLERANCE",
    "RiskEstimate",
    "denoise_risk",
    "estimate_noise",
    "gaussian_centre_weight",
]

#: Integer data are counts when the measured variance/mean is inside this range.
COUNTS_GAIN_RANGE = (0.7, 1.4)
#: Allowed distance of the measured residual neighbour correlation from -0.4.
CORRELATION_TOLERANCE = 0.15
#: Independent pixels: corr(r_n, r_n+1) of the residual to the 4-neighbour mean.
INDEPENDENT_CORRELATION = -0.4
TRIM = 9.0  # residuals beyond 3 standard deviations of the noise model are left out of its fit
TRIM_VARIANCE = 0.9733  # the variance of a unit Gaussian cut at +-3


@dataclasses.dataclass(frozen=True)
class RiskEstimate:
    """What :func:`denoise_risk` found. ``mse`` and ``per_frame`` are in the data's
    units squared per pixel; NaN where ``valid`` is False."""

    mse: float  #: estimated mean((denoise(y) - E y)^2) over every frame and pixel
    stderr: float  #: standard error of ``mse``: spread of ``per_frame`` / sqrt(frames) (NaN for one frame)
    per_frame: np.ndarray  #: the estimate per frame, shaped like the frames' leading axes
    noisy_mse: float  #: estimated MSE of the noisy input itself (the mean noise variance)
    psnr_gain: float  #: 10 log10(noisy_mse / mse): the estimated PSNR gain (dB) of the denoiser
    gain: float  #: the value of one electron in the data's units (given or measured)
    read_noise: float  #: Gaussian read noise (data units; given or measured)
    method: str  #: "linear" (exact, centre weight given) or "monte-carlo"
    probes: int  #: denoiser calls spent on the Monte-Carlo term (0 for "linear")
    valid: bool  #: False when an assumption failed (see ``reason``)
    reason: str  #: why not valid, "" otherwise
    checks: dict  #: what was measured to check the assumptions


def gaussian_centre_weight(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """``(H, W)`` centre weight ``h_nn`` of :func:`prenet_jax.ops.gaussian_filter` (the
    normalised filter: larger near the border). ``sigma <= 0``: ones (identity)."""
    from ..ops import gaussian_matrix

    h, w = shape
    if sigma <= 0:
        return np.ones((h, w))
    return np.outer(np.diag(gaussian_matrix(h, float(sigma))), np.diag(gaussian_matrix(w, float(sigma)))).astype(np.float64)


def _box(y: np.ndarray, k: int) -> np.ndarray:
    """Sum over the ``(2k+1)^2`` box around each pixel (zero outside the frame)."""
    p = np.pad(y, ((0, 0), (k + 1, k), (k + 1, k)))
    c = p.cumsum(1).cumsum(2)
    n = 2 * k + 1
    return c[:, n:, n:] - c[:, :-n, n:] - c[:, n:, :-n] + c[:, :-n, :-n]


def _residuals(y: np.ndarray):
    """Pixels 3 or more from the border: (level, residual to the 4-neighbour mean, and
    the pairs of horizontally / vertically adjacent residuals with their level). A
    residual's level is the mean of its 4 diagonal neighbours, a pair's the mean of
    the ring at distance 3 (the 7x7 box less the 5x5 one): no pixel of the residual or
    the pair is in it, so binning by it selects nothing about their noise."""
    h, w = y.shape[-2:]
    nb = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:]) / 4.0
    r = (y[:, 1:-1, 1:-1] - nb)[:, 2:-2, 2:-2]  # pixels 3..H-4
    ring = ((_box(y, 3) - _box(y, 2)) / 24.0)[:, 3 : h - 3, 3 : w - 3]
    rh = (r[:, :, :-1].ravel(), r[:, :, 1:].ravel(), ring[:, :, :-1].ravel())
    rv = (r[:, :-1, :].ravel(), r[:, 1:, :].ravel(), ring[:, :-1, :].ravel())
    # for the variance: the 4 diagonal neighbours, closer, and none of them in the residual
    diag = ((y[:, :-2, :-2] + y[:, :-2, 2:] + y[:, 2:, :-2] + y[:, 2:, 2:]) / 4.0)[:, 2:-2, 2:-2]
    return diag.ravel(), r.ravel(), y[:, 3 : h - 3, 3 : w - 3].ravel(), rh, rv


def estimate_noise(noisy, gain: float | None = None, read_noise: float | None = None) -> dict:
    """Noise model of frames ``(..., H, W)``: ``{"gain", "read_noise", "valid", "reason",
    "checks"}`` (module docstring: the assumptions and how they are checked)."""
    y = np.asarray(noisy, np.float64)
    if y.ndim < 2 or min(y.shape[-2:]) < 9:
        raise ValueError(f"denoise_risk needs frames (..., H, W) of at least 9x9 pixels, got shape {y.shape}")
    y = y.reshape(-1, *y.shape[-2:])
    if not np.all(np.isfinite(y)):
        raise ValueError("denoise_risk: the frames hold NaN or Inf")
    integer = bool(np.all(y == np.round(y)))
    level, r, yc, rh, rv = _residuals(y)
    g_fit, c_fit, (md, mb), (vd, vb) = _fit_variance(level, r, yc, y.shape[0])
    scale = max(float(np.max(np.abs(y))), 1e-30)
    noise_free = not (vb > 1e-12 * scale**2 or vd > 1e-12 * scale**2)
    checks: dict = {"integer": integer, "noise_free": noise_free, "levels": (md, mb), "variances": (vd, vb)}
    rho = _neighbour_correlation(rh, rv, g_fit, c_fit, mb, y.shape[0])
    checks["neighbour_correlation"] = rho
    checks["measured_gain"], checks["measured_read_noise"] = float(g_fit), float(math.sqrt(max(c_fit, 0.0)))
    reason = ""
    if not noise_free and not math.isnan(rho) and abs(rho - INDEPENDENT_CORRELATION) > CORRELATION_TOLERANCE:
        reason = (
            f"neighbouring pixels' noise is correlated (residual correlation {rho:+.2f}, "
            f"{INDEPENDENT_CORRELATION:+.2f} for independent pixels): the frames were filtered, resampled, "
            "binned or interpolated after counting, and the risk estimate does not apply"
        )
    g, rn, reason = _chosen_units(gain, read_noise, integer, noise_free, g_fit, c_fit, reason)
    return {"gain": float(g), "read_noise": float(rn), "valid": not reason, "reason": reason, "checks": checks}


def _fit_variance(level, r, yc, n_frames: int) -> tuple[float, float, tuple[float, float], tuple[float, float]]:
    """The noise model ``Var y = g_fit * level + c_fit`` fitted to the residuals ``r``:
    ``(g_fit, c_fit, (dark mean, bright mean), (dark variance, bright variance))``."""
    r2 = r * r / 1.25  # E r^2 = 1.25 Var y for independent pixels (the neighbours' share)
    # two groups by level (the diagonal neighbours' mean, independent of the residual's
    # noise): the dark half and the brightest tenth; in each, the mean variance and the
    # mean count (the pixels' own values: no errors-in-variables dilution). Residuals
    # beyond 25x the variance the model expects (signal edges, spots) are left out;
    # the model is refitted twice with the trimmed sums.
    dark = level <= np.quantile(level, 0.5)
    bright = level >= np.quantile(level, 0.9)
    per_frame = level.reshape(n_frames, -1)
    core = (per_frame >= 0.8 * per_frame.max(axis=1, keepdims=True)).ravel() & (level > 0)
    g_fit, c_fit = 1.0, float(np.median(r2[dark]) / 0.455)
    for _ in range(3):
        keep = r2 <= TRIM * np.maximum(g_fit * np.maximum(level, 0.0) + c_fit, 1e-30)
        kd, kb = keep & dark, keep & bright
        # / TRIM_VARIANCE: what the cut takes from a Gaussian's variance
        vd = float(r2[kd].sum()) / max(int(dark.sum()), 1) / TRIM_VARIANCE
        vb = float(r2[kb].sum()) / max(int(bright.sum()), 1) / TRIM_VARIANCE
        md, mb = float(yc[kd].mean()) if kd.any() else 0.0, float(yc[kb].mean()) if kb.any() else 0.0
        if mb - md <= 0:
            break
        # where the bright pixels hold 20 electrons or more (near-Gaussian noise) the median
        # of r^2 is the better variance: blind to the structure that inflates the mean
        # (per pixel: r^2 / its expected level, over the frames' bright cores, where the
        # levels are within 2x of each other)
        lv = level[core]
        g_med = float(np.median(r2[core] / np.maximum(lv + c_fit / max(g_fit, 1e-30), 1e-30))) / 0.455 if core.any() else 0.0
        if g_med > 0 and float(lv.mean()) >= 20.0 * g_med:
            g_fit = g_med
            continue
        g_fit = (vb - vd) / (mb - md)
        c_fit = max(vd - g_fit * md, 0.0)
        if g_fit <= 0:
            break
    return g_fit, c_fit, (md, mb), (vd, vb)


def _neighbour_correlation(rh, rv, g_fit: float, c_fit: float, mb: float, n_frames: int) -> float:
    """Correlation of adjacent residuals, 0 for independent pixels (module docstring)."""
    # correlation of adjacent residuals (trimmed the same way, the brightest tenth of the
    # levels left out: there, at high dose, the signal's own curvature correlates them)
    num = den = 0.0
    plus, minus = [], []
    for a_, b_, lev in (rh, rv):
        cut = np.quantile(lev, 0.9)
        lim = 25.0 * 1.25 * np.maximum(g_fit * np.maximum(lev, 0.0) + c_fit, 1e-30)
        sel = (lev < cut) & (a_ * a_ <= lim) & (b_ * b_ <= lim)
        num += float(np.sum(a_[sel] * b_[sel]))
        den += float(np.sqrt(np.sum(a_[sel] ** 2) * np.sum(b_[sel] ** 2)))
        lf = lev.reshape(n_frames, -1)
        hi = (lf >= 0.8 * lf.max(axis=1, keepdims=True)).ravel() & (lev > 0)  # the bright cores: no edge in the ring
        plus.append(a_[hi] + b_[hi])
        minus.append(a_[hi] - b_[hi])
    rho = num / den if den > 0 else math.nan
    # many electrons per pixel in the bright cores: from there, robustly (medians of
    # (a+b)^2 and (a-b)^2: Var(a+b) = 2V(1+rho), Var(a-b) = 2V(1-rho))
    if g_fit > 0 and mb >= 20.0 * g_fit:
        sp, sm = float(np.median(np.concatenate(plus) ** 2)), float(np.median(np.concatenate(minus) ** 2))
        if sp + sm > 0:
            rho = (sp - sm) / (sp + sm)
    return rho


def _chosen_units(gain, read_noise, integer: bool, noise_free: bool, g_fit: float, c_fit: float, reason: str) -> tuple[float, float, str]:
    """``(gain, read noise, reason)``: those given, else counts for integer frames, else
    the measured ones; ``reason`` (the first failed check) gains why measured units do not fit."""
    g = gain
    rn = read_noise
    if g is None:
        if integer:
            lo, hi = COUNTS_GAIN_RANGE
            if not noise_free and not lo <= g_fit <= hi:
                reason = reason or (
                    f"integer-valued frames whose variance is {g_fit:.2g}x their mean (1 for counted "
                    "electrons, Poisson): not counts of independent electrons; pass gain= (and read_noise=) "
                    "if the detector's unit is not one electron"
                )
            g = 1.0
            if rn is None:
                rn = 0.0  # counted electrons
        elif noise_free:
            g = 0.0
        else:
            if g_fit <= 0:
                reason = reason or f"the noise variance does not grow with the signal (measured gain {g_fit:.3g}): not Poisson-like counts"
            g = max(float(g_fit), 0.0)
    if rn is None:
        rn = math.sqrt(max(float(c_fit), 0.0)) if gain is None else 0.0
    return g, rn, reason


def denoise_risk(
    noisy,
    denoise: Callable,
    *,
    seed: int = 0,
    gain: float | None = None,
    read_noise: float | None = None,
    centre_weight=None,
    probes: int = 16,
    spacing: int = 4,
    signed: bool = False,
    strict: bool = False,
) -> RiskEstimate:
    """Estimate ``mean((denoise(noisy) - E noisy) ** 2)`` from the noisy frames alone.

    ``noisy``: frames ``(N, H, W)`` or ``(Rx, Ry, H, W)`` (counts, or counts in other
    units with ``gain``/``read_noise`` given or measured); ``denoise``: any callable
    mapping such an array to one of the same shape (numpy or jax). ``centre_weight``
    (a scalar or ``(H, W)``; :func:`gaussian_centre_weight`) declares ``denoise`` a
    linear filter with that centre weight: the exact estimate, one call. Otherwise a
    Monte-Carlo estimate with ``probes`` extra calls (``seed`` fixes it), each
    perturbing every ``spacing``-th pixel in both directions. ``strict``: raise
    ``ValueError`` instead of returning ``valid=False``. The module docstring gives the
    estimator, its assumptions and its measured accuracy.
    """
    y = np.asarray(noisy, np.float64)
    if y.ndim not in (3, 4):
        raise ValueError(f"denoise_risk wants frames (N, H, W) or (Rx, Ry, H, W), got shape {y.shape}")
    lead, (h, w) = y.shape[:-2], y.shape[-2:]
    noise = estimate_noise(y, gain, read_noise)
    g, rn = noise["gain"], noise["read_noise"]
    n_frames = int(np.prod(lead))

    def call(arr):
        out = np.asarray(denoise(arr.astype(np.float32)), np.float64)
        if out.shape != arr.shape:
            raise ValueError(f"denoise returned shape {out.shape} for input {arr.shape}; it must keep the shape")
        return out

    def bad(reason):
        if strict:
            raise ValueError(f"denoise_risk: {reason}")
        nan = np.full(lead, np.nan)
        return RiskEstimate(math.nan, math.nan, nan, math.nan, math.nan, g, rn, method, 0, False, reason, noise["checks"])

    method = "linear" if centre_weight is not None else "monte-carlo"
    if not noise["valid"]:
        return bad(noise["reason"])
    v = g * y + rn**2  # unbiased per-pixel noise variance
    f = call(y)
    axes = (-2, -1)
    fit = np.mean((f - y) ** 2, axis=axes) - np.mean(v, axis=axes)
    if centre_weight is not None:
        c = np.broadcast_to(np.asarray(centre_weight, np.float64), (h, w))
        div = np.mean(c * v, axis=axes)  # sum_n v_n h_nn g / g
        used = 0
    else:
        rng = np.random.default_rng(seed)
        sp = max(1, int(spacing))
        # every offset once when probes >= spacing^2 (each pixel perturbed once: no sampling
        # noise); fewer: a random subset of them
        offsets = np.arange(sp * sp) if probes >= sp * sp else rng.permutation(sp * sp)[: max(1, probes)]
        div = np.zeros(lead)
        used = 0
        parts = []
        if rn > 0:  # read noise: the first-order PG-URE, v_n times a derivative (a small
            # step), random signs against the cross-talk of perturbing every pixel
            parts.append((v, 0.1 * rn, True))
        elif g > 0:  # counts: the exact backward difference at the counting step
            parts.append((g * y, g, False))
        for weight, delta, signed_part in parts:
            acc = np.zeros(lead)
            for o in offsets:
                a, b = divmod(int(o), sp)
                probe = np.zeros((h, w))
                sub = probe[a::sp, b::sp]
                sub[...] = rng.choice([-1.0, 1.0], size=sub.shape) if (signed or signed_part) else 1.0
                probe = probe * (weight != 0)  # a pixel of no variance (a Poisson 0) adds nothing but cross-talk
                fp = call(y - delta * probe)
                acc += np.sum(probe * weight * (f - fp), axis=axes) * (sp * sp) / delta / (h * w)
            div = div + acc / len(offsets)
            used += len(offsets)
    per = fit + 2.0 * div
    mse = float(np.mean(per))
    stderr = float(np.std(per, ddof=1) / math.sqrt(n_frames)) if n_frames > 1 else math.nan
    noisy_mse = float(np.mean(v))
    gain_db = 10.0 * math.log10(noisy_mse / mse) if mse > 0 and noisy_mse > 0 else math.nan
    return RiskEstimate(mse, stderr, per.reshape(lead), noisy_mse, gain_db, g, rn, method, used, True, "", noise["checks"])
