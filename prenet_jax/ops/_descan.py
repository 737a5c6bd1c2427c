"""A fitted descan model: the beam centre as a smooth function of the scan position.

The beam centre moves across a scan in two ways: the descan, a slow drift that is
(almost) a plane in the scan coordinates because the descan coils are driven linearly
with the scan coils, and per-frame jitter. A per-frame estimate adds its own noise to
both. Fitting a low-order surface to the centre map averages that noise over the whole
scan (the model is ~sqrt(frames / terms) times less noisy than one frame), and a robust
fit ignores the frames whose estimate failed. What the model cannot represent (real
jitter) is in the residual map, which :func:`fit_descan` ``mode="auto"`` keeps only
where it stands out from the estimator noise.

Plain numpy: the fit has at most 6 unknowns per coordinate, far too small for a device.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Descan", "descan_design", "fit_descan"]

_TERMS = {1: ("1", "y", "x"), 2: ("1", "y", "x", "y^2", "xy", "x^2")}
_MODES = ("auto", "frame", "plane", "quadratic")
_HUBER = 1.345  # Huber's tuning constant: 95 % efficiency on Gaussian residuals
_MAD = 1.482602218505602  # MAD -> standard deviation for a Gaussian
_FLOOR = 1e-9  # px; a scale floor, so exact (noise-free) centre maps do not divide by zero


@dataclasses.dataclass(frozen=True)
class Descan:
    """The result of :func:`fit_descan`.

    Attributes
    ----------
    centers : (Sy, Sx, 2) float64, the chosen centre ``(row, col)`` of every frame (px):
        the input (``"frame"``), the model (``"plane"``, ``"quadratic"``), or the model
        plus the significant residuals (``"auto"``)
    model : (Sy, Sx, 2) float64, the fitted surface evaluated at every scan position
    mode : the mode asked for
    degree : 1 (plane) or 2 (quadratic): the model's degree (chosen by BIC for
        ``"auto"`` and ``"frame"``)
    coefficients : (2, T) float64, px: row ``j`` holds coordinate ``j``'s (row, then
        col) coefficients of the terms ``terms``, in the normalised scan coordinates
        ``y = 2 i / (Sy - 1) - 1`` (``i`` the index along scan axis 0) and
        ``x = 2 j / (Sx - 1) - 1`` (axis 1), both in ``[-1, 1]`` (0 for an axis of
        length 1). E.g. the plane's ``y`` coefficient is half the drift from the first
        to the last scan row.
    terms : the names of the ``T`` terms: ``("1", "y", "x")`` or
        ``("1", "y", "x", "y^2", "xy", "x^2")``
    residuals : (Sy, Sx, 2) float64, input minus model (NaN where the input was NaN)
    sigma : (2,) float64, robust standard deviation of the residuals (1.4826 MAD over
        the valid frames), per coordinate: jitter and estimator noise together (with a
        ``center_noise`` that differs between frames: of the residuals in units of each
        frame's noise relative to the median frame's, i.e. a median frame's sigma)
    noise : float64 array broadcastable to (Sy, Sx, 2): the per-frame estimator noise
        ``auto`` judged the residuals against (``center_noise`` if given, else the
        neighbour-difference estimate, shape (2,))
    outliers : (Sy, Sx) bool, valid frames farther from the model than ``k`` sigma
        (``sqrt((r_row / sigma_row)^2 + (r_col / sigma_col)^2) > k``, each residual
        divided by the frame's relative noise where ``center_noise`` differs between
        frames); never set for invalid frames. Callers may OR them into their flags.
    kept : (Sy, Sx) bool, the frames whose ``centers`` are their own input centre
    valid : (Sy, Sx) bool, the frames the fit used (``valid`` and finite)
    """

    centers: np.ndarray
    model: np.ndarray
    mode: str
    degree: int
    coefficients: np.ndarray
    terms: tuple[str, ...]
    residuals: np.ndarray
    sigma: np.ndarray
    noise: np.ndarray
    outliers: np.ndarray
    kept: np.ndarray
    valid: np.ndarray


def descan_design(scan: tuple[int, int], degree: int) -> np.ndarray:
    """Design matrix of the descan surface.

    Parameters
    ----------
    scan : (Sy, Sx)
    degree : 1 (terms 1, y, x) or 2 (adds y^2, xy, x^2)

    Returns
    -------
    (Sy * Sx, T) float64, rows in C order of the scan, in the normalised coordinates of
    :class:`Descan` (``[-1, 1]``: the columns are O(1), so the normal equations are well
    conditioned whatever the scan size).
    """
    sy, sx = scan

    def axis(n):
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)

    y, x = np.meshgrid(axis(sy), axis(sx), indexing="ij")
    y, x = y.ravel(), x.ravel()
    cols = [np.ones_like(y), y, x]
    if degree == 2:
        cols += [y * y, x * y, x * x]
    elif degree != 1:
        raise ValueError(f"degree must be 1 or 2, got {degree}")
    return np.stack(cols, 1)


def _robust_sigma(r: np.ndarray) -> float:
    """1.4826 MAD: the standard deviation of the Gaussian core, blind to < 50 % outliers."""
    if r.size == 0:
        return _FLOOR
    return max(_MAD * float(np.median(np.abs(r - np.median(r)))), _FLOOR)


def _lstsq(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    # Weighted least squares through lstsq (not the normal equations): a rank-deficient
    # design (a one-line scan has no y) gets the minimum-norm solution instead of an error.
    sw = np.sqrt(w)
    return np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]


def _huber_irls(a: np.ndarray, b: np.ndarray, use: np.ndarray, max_iter: int = 50, tol: float = 1e-10) -> np.ndarray:
    """Huber M-estimate of ``b ~ a @ coef`` over the rows ``use``.

    Iteratively reweighted least squares: weight 1 inside ``1.345 s`` and ``1.345 s / |r|``
    outside, ``s`` the MAD scale of the current residuals, re-estimated every iteration.
    The Huber loss is convex, so the iteration converges from the ordinary least-squares
    start whatever the outliers.
    """
    w0 = use.astype(np.float64)
    coef = _lstsq(a, b, w0)
    for _ in range(max_iter):
        r = b - a @ coef
        c = _HUBER * _robust_sigma(r[use])
        ar = np.abs(r)
        w = w0 * np.where(ar <= c, 1.0, c / np.maximum(ar, c))
        new = _lstsq(a, b, w)
        done = np.max(np.abs(new - coef)) <= tol * (1.0 + np.max(np.abs(coef)))
        coef = new
        if done:
            break
    return coef


def _fit(a: np.ndarray, b: np.ndarray, usable: np.ndarray, k: float, scale: np.ndarray | None = None):
    """Robust fit of both coordinates: Huber IRLS, then refits without the outliers.

    Huber weights bound an outlier's pull but do not remove it: 3 % of frames at +3 px
    still shift a Huber plane by ~3 % of ``1.345 sigma``. Once the Huber fit has found
    the outliers (``> k`` sigma), they are dropped and the fit repeated (a few rounds,
    until the outlier set is stable): the final model is the Huber fit of the inliers.

    ``scale`` (N, 2): each frame's noise relative to a typical frame's. The fit is then
    one of the standardised rows ``(a / s, b / s)``: weighted least squares with weights
    ``1 / s^2`` inside the Huber core, and residuals judged in units of each frame's own
    noise (a frame of a tenth of the counts may lie ``sqrt(10)`` times farther off
    before it is an outlier).

    Returns ``(coef (2, T), residuals (N, 2), sigma (2,), outliers (N,))``; ``sigma`` in
    px of a frame of ``scale`` 1.
    """
    s = np.ones(b.shape, np.float64) if scale is None else np.where(usable[:, None], scale, 1.0)
    out = np.zeros(b.shape[0], bool)
    bz = np.where(usable[:, None], b, 0.0)  # invalid rows carry weight 0; keep NaN out of lstsq
    for _ in range(5):
        use = usable & ~out
        coef = np.stack([_huber_irls(a / s[:, j : j + 1], bz[:, j] / s[:, j], use) for j in range(2)])
        r = b - a @ coef.T
        rs = r / s
        sigma = np.array([_robust_sigma(rs[usable, j]) for j in range(2)])
        z = np.sqrt(((np.where(usable[:, None], rs, 0.0) / sigma) ** 2).sum(1))
        new = usable & (z > k)
        if np.array_equal(new, out):
            break
        out = new
    return coef, r, sigma, out


def _neighbour_noise(r: np.ndarray, ok: np.ndarray, order: int = 2) -> np.ndarray | None:
    """Per-frame estimator noise from the high-frequency part of the residual map.

    An ``order``-th difference of neighbouring residuals along a scan axis (order 2:
    ``r[i-1] - 2 r[i] + r[i+1]``) cancels what is smooth (descan the model left over,
    slow drift, one offset per scan line) and keeps what is independent from frame to
    frame, with variance ``C(2 order, order) sigma^2`` for white noise (6 sigma^2 for
    order 2). Order 2 rather than plain neighbour differences: a jitter of period
    ``T`` scan steps leaks into the m-th difference as ``(2 sin(pi / T))^m /
    sqrt(C(2m, m))`` of its amplitude, less for m = 2 than m = 1 whenever ``T > 3``.
    Each scan axis gives a robust estimate (MAD over differences whose frames are all
    valid and no outliers); the smaller is taken, so jitter that is smooth along either
    axis is not mistaken for noise. Jitter that is white in both directions cannot be
    told from estimator noise this way and is counted as noise.

    Returns (2,) per coordinate, or None when no axis has 8 usable differences.
    """
    coeffs = np.array([(-1.0) ** (order - i) * math.comb(order, i) for i in range(order + 1)])
    gain = np.sqrt((coeffs**2).sum())  # = sqrt(C(2 order, order))
    ests = []
    for axis in (0, 1):
        n = r.shape[axis]
        if n <= order:
            continue
        ra, oka = np.moveaxis(r, axis, 0), np.moveaxis(ok, axis, 0)
        d = sum(c * ra[i : n - order + i] for i, c in enumerate(coeffs))
        pair = np.logical_and.reduce([oka[i : n - order + i] for i in range(order + 1)])
        if pair.sum() < 8:
            continue
        d = d[pair]
        ests.append([_robust_sigma(d[:, j]) / gain for j in range(2)])
    if not ests:
        return None
    return np.min(np.asarray(ests), axis=0)


def fit_descan(
    centers,
    mode: str = "auto",
    *,
    valid=None,
    k: float = 4.0,
    center_noise=None,
    k_sig: float = 4.5,
) -> Descan:
    """Fit the descan of a centre map robustly, and choose a centre for every frame.

    Each coordinate of the centre is fitted, separately, as a plane ``(1, y, x)`` or a
    quadratic ``(1, y, x, y^2, xy, x^2)`` of the scan position (normalised to
    ``[-1, 1]``) by iteratively reweighted least squares with Huber weights (scale from
    the MAD of the residuals); frames farther than ``k`` robust sigmas from the model are
    flagged as outliers and the fit repeated without them.

    Parameters
    ----------
    centers : (Sy, Sx, 2) beam centres ``(row, col)`` in px, e.g.
        ``Pipeline.preprocess(...).centers`` or ``find_centers(...)`` reshaped to the scan
    mode : what ``Descan.centers`` is:

        - ``"frame"``: the input unchanged (the model, residuals and outliers are still
          reported);
        - ``"plane"`` / ``"quadratic"``: the model of that degree, for every frame
          (invalid frames included: the model fills them in);
        - ``"auto"``: the model, degree chosen by BIC, plus each frame's residual where
          it is significant: kept when ``sqrt(sum_j (r_j / noise_j)^2) > k_sig`` (see
          ``center_noise``), the model otherwise; where the residuals' robust variance
          exceeds twice the noise's in both coordinates (jitter larger than the noise),
          every frame keeps its own residual. Outliers get the model when they are
          significant map-wide, ``sqrt(sum_j (r_j / sigma_j)^2) > max(k,
          sqrt(2 ln(1000 N)))`` for ``N`` valid frames (5.3 for 32 x 32), which a map of
          Gaussian residuals exceeds with probability 0.1 %: a frame just past ``k``
          sigmas is more likely a tail of real jitter than a failed estimate, one at
          tens of sigmas the reverse. A hard keep-or-drop, not a shrinkage: a kept residual is real
          jitter, and shrinking it (e.g. Wiener-like ``r (1 - noise^2 / r^2)``) would bias
          it; a dropped one is at most ``k_sig`` noise.

    valid : (Sy, Sx) bool, the frames to fit (default: all); non-finite centres are
        never used. Invalid frames get the model in every mode but ``"frame"``.
    k : outlier threshold, in robust sigmas of the residuals (2-D: ``exp(-k^2 / 2)`` of
        Gaussian frames are flagged, 3e-4 for ``k = 4``)
    center_noise : px, standard deviation of the per-frame centre estimate, scalar or
        broadcastable to (Sy, Sx, 2), if the caller knows it (e.g. from a validation of
        the estimator at this dose, or :meth:`prenet_jax.Pipeline.center_noise`).
        Default: estimated from differences of neighbouring residuals (see
        ``Descan.noise``); that estimate counts jitter that is white in both scan
        directions as noise, so for such jitter ``auto`` falls back to the model unless
        ``center_noise`` is given. Where it differs between frames, every mode weights
        the fit by it (see ``_fit``: weights ``1 / noise^2``, outliers judged in units of
        each frame's noise; ``Descan.sigma`` is then a median-noise frame's); ``"auto"``
        also judges each residual's significance by it.
    k_sig : significance threshold of a residual for ``"auto"``, in units of the noise.
        A frame of pure estimator noise passes with probability ``exp(-k_sig^2 / 2)``
        (4e-5 at 4.5); each one that passes costs ~``k_sig`` noise where the model would
        have been ~``sqrt(3 / N)`` noise, so on a 32 x 32 pure descan one such frame
        already makes ``auto`` ~7 % worse than the plane. 4 would let through ~0.35
        frames a map (and often two); 4.5 keeps ``auto`` within 10 % of the better of
        frame and plane in 40 of 40 simulated maps of either kind, and drops only
        jitter below 4.5 noise (1.6 % of frames for 0.5 px jitter and 0.02 px noise).

    Returns
    -------
    :class:`Descan`

    Examples
    --------
    >>> res = pipe.preprocess(cube)
    >>> d = fit_descan(res.centers, "plane", valid=(res.flags & FLAGS_EXCLUDED) == 0)
    >>> d.coefficients[:, 1:3]     # px per half scan, (row, col) x (y, x)
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    c = np.asarray(centers, np.float64)
    if c.ndim != 3 or c.shape[-1] != 2:
        raise ValueError(f"centers must be (Sy, Sx, 2), got shape {c.shape}")
    sy, sx = c.shape[:2]
    ok = np.isfinite(c).all(-1)
    if valid is not None:
        v = np.asarray(valid)
        if v.shape != (sy, sx):
            raise ValueError(f"valid must be (Sy, Sx) = {(sy, sx)}, got shape {v.shape}")
        ok &= v.astype(bool)
    if not ok.any():
        raise ValueError("no valid, finite centre to fit the descan to")
    usable = ok.ravel()
    b = c.reshape(-1, 2)
    given = None if center_noise is None else np.asarray(center_noise, np.float64)
    scale = None
    if given is not None:
        per_frame = np.broadcast_to(given, (sy, sx, 2))  # shape check
        if not (per_frame > 0).all():
            raise ValueError("center_noise must be > 0")
        if np.ptp(per_frame[ok], axis=0).max() > 0:
            # frames of different noise (counts): weighted by it, relative to the median frame
            scale = (per_frame / np.median(per_frame[ok], axis=0)).reshape(-1, 2)

    fits = {}
    for deg in (1,) if mode == "plane" else (2,) if mode == "quadratic" else (1, 2):
        fits[deg] = _fit(descan_design((sy, sx), deg), b, usable, k, scale)
    if len(fits) == 1:
        degree = next(iter(fits))
    else:
        degree = _choose_degree(fits, usable)
    coef, r, sigma, out = fits[degree]
    a = descan_design((sy, sx), degree)
    model = (a @ coef.T).reshape(sy, sx, 2)
    r = r.reshape(sy, sx, 2)
    out = out.reshape(sy, sx)

    if given is not None:
        noise = given
    else:
        noise = _neighbour_noise(r, ok & ~out)
        # No neighbours to compare: nothing tells jitter from noise, so trust the model.
        noise = sigma.copy() if noise is None else np.maximum(noise, _FLOOR)

    if mode == "frame":
        kept = np.ones((sy, sx), bool)
        chosen = c.copy()
    elif mode == "auto":
        r0 = np.where(ok[..., None], r, 0.0)
        # An outlier is replaced by the model only where it is significant across the
        # whole map: a k-sigma frame among thousands is as likely a tail of the jitter
        # (real, keep it) as an estimator failure; beyond k_map one Gaussian map in 1000
        # has a frame.
        k_map = max(k, np.sqrt(2.0 * np.log(1000.0 * ok.sum())))
        rel = 1.0 if scale is None else scale.reshape(sy, sx, 2)
        failed = out & (np.sqrt(((r0 / (rel * sigma)) ** 2).sum(-1)) > k_map)
        # Real jitter larger than the noise (residual variance over twice the noise's): a
        # frame's own centre is then closer to the truth than the model is on average, so
        # every frame keeps it (dropping those below k_sig noise would cost up to k_sig
        # noise each, where keeping costs one noise).
        typical = np.median(np.broadcast_to(noise, (sy, sx, 2))[ok], axis=0)
        # (with a scale, sigma is that of a median frame, whose noise is ``typical``)
        if np.all(sigma**2 > 2.0 * typical**2):
            kept = ok & ~failed
        else:
            kept = ok & ~failed & (np.sqrt(((r0 / noise) ** 2).sum(-1)) > k_sig)
        chosen = np.where(kept[..., None], c, model)
    else:
        kept = np.zeros((sy, sx), bool)
        chosen = model.copy()
    return Descan(
        centers=chosen,
        model=model,
        mode=mode,
        degree=degree,
        coefficients=coef,
        terms=_TERMS[degree],
        residuals=r,
        sigma=sigma,
        noise=noise,
        outliers=out,
        kept=kept,
        valid=ok,
    )


def _choose_degree(fits: dict, usable: np.ndarray) -> int:
    """Plane or quadratic by BIC, ``sum_j n log(RSS_j / n) + T log n`` per coordinate.

    Both RSS are taken over the same frames, the quadratic fit's inliers: a plane that
    misses a curved descan must not escape the comparison by calling the curved part
    outliers. Too few frames for the quadratic -> plane.
    """
    _, r2, _, out2 = fits[2]
    _, r1, _, _ = fits[1]
    s = usable & ~out2
    n = int(s.sum())
    if n < 2 * 6:
        return 1
    bic = {}
    for deg, r in ((1, r1), (2, r2)):
        rss = np.maximum((r[s] ** 2).sum(0), n * _FLOOR**2)
        bic[deg] = float((n * np.log(rss / n)).sum() + 2 * len(_TERMS[deg]) * np.log(n))
    return 2 if bic[2] < bic[1] else 1
