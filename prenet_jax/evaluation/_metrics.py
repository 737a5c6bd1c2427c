"""Evaluation metrics (numpy, host side): every one scored against a known truth.

Conventions
-----------
- Intensity errors are computed after dividing both frames by the maximum of the
  *clean* frame (the target), so a frame's peak is 1 whatever the dose:
  ``MSE = mean((est - clean)^2) / max(clean)^2`` and ``PSNR = 10 log10(1 / MSE)`` dB
  (peak 1 after that normalisation). Scores are per frame, then summarised.
- Centres are ``(row, col) = (y, x)`` in pixels: MAE-Y is the mean ``|d_row|``, MAE-X the
  mean ``|d_col|``, MAE-R the mean Euclidean distance.
- Ellipse angles are axis directions: an error is taken modulo pi, in ``[0, pi/2]``.
- A summary gives ``mean``, ``std`` (the spread over the test set), ``median``, ``p95``,
  ``n`` (finite values used) and ``n_failed`` (non-finite values, i.e. a method that
  returned no answer), so every number in a report carries its spread and its N.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "mse",
    "psnr",
    "center_errors",
    "angle_error",
    "ratio_error",
    "summarize",
    "radial_profile",
    "radial_std",
    "format_stat",
]


def _peak(clean: np.ndarray) -> np.ndarray:
    peak = np.max(clean, axis=(-2, -1))
    return np.where(peak > 0, peak, 1.0)


def mse(estimate: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per-frame mean squared error of ``(..., H, W)`` frames, both divided by the clean
    frame's maximum (peak = 1 convention). Returns ``(...,)`` float64."""
    est = np.asarray(estimate, np.float64)
    ref = np.asarray(clean, np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"estimate {est.shape} and clean {ref.shape} differ in shape")
    p = _peak(ref)[..., None, None]
    return np.mean(np.square((est - ref) / p), axis=(-2, -1))


def psnr(estimate: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per-frame peak signal-to-noise ratio in dB, peak = the clean frame's maximum:
    ``10 log10(max(clean)^2 / mean((est - clean)^2))``. A perfect estimate gives ``inf``."""
    with np.errstate(divide="ignore"):
        return -10.0 * np.log10(mse(estimate, clean))


def center_errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Errors of ``(N, 2)`` centres ``(row, col)``: ``dy``, ``dx`` (signed), ``ey``, ``ex``
    (absolute) and ``er`` (Euclidean), each ``(N,)``. Non-finite estimates stay NaN."""
    est = np.asarray(estimate, np.float64).reshape(-1, 2)
    ref = np.asarray(truth, np.float64).reshape(-1, 2)
    d = est - ref
    return {"dy": d[:, 0], "dx": d[:, 1], "ey": np.abs(d[:, 0]), "ex": np.abs(d[:, 1]), "er": np.hypot(d[:, 0], d[:, 1])}


def angle_error(estimate, truth) -> np.ndarray:
    """Smallest difference between two axis directions (radians), modulo pi: in ``[0, pi/2]``."""
    d = np.mod(np.asarray(estimate, np.float64) - np.asarray(truth, np.float64), math.pi)
    return np.minimum(d, math.pi - d)


def ratio_error(estimate, truth) -> np.ndarray:
    """Absolute error of the axis ratio ``a/b`` (both >= 1)."""
    return np.abs(np.asarray(estimate, np.float64) - np.asarray(truth, np.float64))


def summarize(values) -> dict[str, float]:
    """``mean, std, median, p95, n, n_failed`` of the finite values (NaN when none)."""
    v = np.asarray(values, np.float64).ravel()
    ok = np.isfinite(v)
    f = v[ok]
    nan = float("nan")
    if f.size == 0:
        return {"mean": nan, "std": nan, "median": nan, "p95": nan, "n": 0, "n_failed": int((~ok).sum())}
    return {
        "mean": float(f.mean()),
        "std": float(f.std(ddof=1)) if f.size > 1 else 0.0,
        "median": float(np.median(f)),
        "p95": float(np.percentile(f, 95)),
        "n": int(f.size),
        "n_failed": int((~ok).sum()),
    }


def radial_profile(
    image: np.ndarray, center=None, n_angles: int = 360, r_max: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuthal mean and standard deviation of ``image`` ``(H, W)`` about ``center``.

    Returns ``(radii (R,), mean (R,), std (R,))`` with one-pixel radial steps, from the
    polar resampling of :func:`prenet_jax.ops.polar_transform` (cubic).
    """
    from ..ops import polar_transform

    h, w = image.shape
    if r_max is None:
        r_max = min(h, w) / 2.0 - 1.0
    n_r = int(round(r_max)) + 1
    c = None if center is None else np.asarray(center, np.float32)
    polar = np.asarray(polar_transform(np.asarray(image, np.float32), c, n_angles, n_r, float(r_max), method="cubic"), np.float64)
    radii = np.linspace(0.0, r_max, n_r)
    return radii, polar.mean(axis=0), polar.std(axis=0)


def radial_std(image: np.ndarray, center=None, r_min: float = 2.0, r_max: float | None = None, n_angles: int = 360) -> float:
    """Relative radial standard deviation: how far from circular a (mean) pattern is.

    ``sum_r std_phi I(r, phi) / sum_r mean_phi I(r, phi)`` over ``r_min <= r <= r_max``:
    0 for a perfectly circular pattern; an ellipse raises it at every ring edge. The ratio
    of sums weights radii by their intensity, so empty radii add neither noise nor signal.
    """
    radii, mean, std = radial_profile(image, center, n_angles, r_max)
    sel = radii >= r_min
    den = float(mean[sel].sum())
    return float(std[sel].sum() / den) if den > 0 else float("nan")


def format_stat(s: dict, digits: int = 3, spread: bool = True, scale: float = 1.0) -> str:
    """``mean ± std`` of a :func:`summarize` dict (times ``scale``), for a report table."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    m, sd = s["mean"] * scale, s["std"] * scale

    def f(x):
        return f"{x:.{digits}g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")

    return f"{f(m)} ± {f(sd)}" if spread else f(m)
