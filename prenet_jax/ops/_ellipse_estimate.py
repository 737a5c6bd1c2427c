"""The classical ellipse estimate of a recentred mean pattern: several estimators, one choice.

A single edge fit (:func:`prenet_jax.ops.fit_ellipse_edge` over the whole frame) takes
the steepest drop along every azimuth, which on real mean patterns is not always the
direct disk's edge: Bragg disks touch or overlap it, a brighter ring or the dynamical
contrast inside the disk wins some azimuths, and it then reported axis ratios over 2 on
legitimate patterns (issue 27: 4 of 256 abTEM crystal means refused). So
:func:`estimate_ellipse` runs

- ``edge``: the edge fit over the whole band (the former estimate);
- ``ring@R``: the edge fit confined to each ring the azimuthal *median* of the radial drop
  shows (the direct disk, an amorphous ring's first maximum, a ring of Bragg disks):
  the median ignores the minority of azimuths that a Bragg disk corrupts;
- ``harmonic``: the quadrupole of the polar transform, which uses every radius at once.
  A pattern that is an elliptically scaled radial profile, ``I(phi, r) = I0(r / s(phi))``
  with ``s = 1 + e cos 2(phi - theta)``, has the ``cos 2phi`` / ``sin 2phi`` components
  ``-e (cos 2theta, sin 2theta) r I0'(r)``; ``e`` follows by least squares over ``r``,
  and the estimate is iterated on the pattern corrected by the current one, where the
  linearisation is exact;

each with a standard error of its ellipticity vector ``(ratio - 1)(cos 2theta, sin
2theta)`` from its own residuals (edge: the robust radial misfit over the azimuths
kept; harmonic: what the scaled-profile model leaves of the quadrupole, large where
Bragg spots rather than an ellipse make it). The valid estimate with the smallest error
is chosen. A harmonic estimate is used only where the model explains the pattern's
quadrupole (:data:`SHARE_MAX`) or an edge estimate agrees with it: the Bragg spots of one
orientation have a quadrupole of their own, which no ellipse explains.

Nothing is returned only when no estimator finds a ring: every edge is missing, covers
too few azimuths, or fits no ellipse of axis ratio up to :data:`MAX_FIT_RATIO` (a stripe,
or frames recentred on wrong centres); :attr:`EllipseEstimate.reason` says what was seen.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..conventions import Ellipse, ellipse_matrix
from ._ellipse_fit import MAX_FIT_RATIO, fit_ellipse_edge, polar_transform
from ._filters import gaussian_filter
from ._warp import frame_center, sample

__all__ = ["EllipseEstimate", "estimate_ellipse", "harmonic_ellipse", "ring_radii"]

#: Edge fits must keep an edge on at least this share of the azimuths: Bragg disks of
#: one orientation corrupt up to a third of the direct disk's edge on the abTEM patterns.
MIN_EDGE_FRACTION = 0.4
#: The harmonic estimate needs an edge estimate within this many combined standard
#: errors (or this absolute ellipticity) of it.
AGREE_SIGMAS = 4.0
AGREE_FLOOR = 0.004
#: The harmonic estimate stands on its own where the scaled-profile model explains all
#: but this share of the pattern's quadrupole (rings: 0.00-0.06 measured on drawn and
#: abTEM means at 1e6 electrons; the Bragg spots of one orientation: 0.2-0.8).
SHARE_MAX = 0.1
#: The harmonic estimate's systematic error, as a share of ``ratio - 1`` (see harmonic_ellipse).
HARMONIC_BIAS = 0.01
#: The smallest edge radii (px) searched, in turn: a search from 1 px only where no
#: candidate from 2 px (the edge fit's default) is valid. The steepest drop of a 2.5 px disk,
#: blurred by the fit's 1 px smoothing, lies at 2-2.2 px, on the band's limit, and every
#: azimuth was rejected (the 32 px crystal cube of the evaluation's test was refused;
#: from 1 px its ratio is 1.099 for a true 1.1). From 1 px on every pattern, the edges of
#: 2-4 px disks that the 2 px search measures well lose to steeper inner features (mean
#: ratio error 0.016 against 0.0005 on that test's 32 px means).
EDGE_R_MINS = (2.0, 1.0)


@dataclasses.dataclass(frozen=True)
class EllipseEstimate:
    """The chosen estimate and the candidates behind it.

    Attributes
    ----------
    ellipse : the chosen ellipse, or None when nothing in the pattern is a ring
    method : which candidate was chosen (``"edge"``, ``"ring@R"``, ``"harmonic"``)
    radius : the edge radius (px) of the chosen candidate (``sqrt(a b)``; for the
        harmonic estimate, that of the strongest ring)
    error : the chosen candidate's standard error of ``(ratio - 1)(cos, sin 2theta)``
    candidates : ``{name: {ratio, angle, radius, error, ok, why}}`` of every candidate
    reason : when ``ellipse`` is None, what was seen, for the error message
    """

    ellipse: Ellipse | None
    method: str
    radius: float
    error: float
    candidates: dict
    reason: str = ""


def _evec(ratio: float, angle: float) -> np.ndarray:
    return (ratio - 1.0) * np.array([math.cos(2 * angle), math.sin(2 * angle)])


# ----------------------------------------------------------------------------- rings


@functools.partial(jax.jit, static_argnames=("n_angles", "n_radii", "r_max"))
def _median_drop(image, n_angles: int, n_radii: int, r_max: float):
    img = gaussian_filter(jnp.asarray(image, jnp.float32), 1.0)
    p = polar_transform(img, None, n_angles, n_radii, r_max, method="linear")
    rad = jnp.linspace(0.0, r_max, n_radii)
    drop = -jnp.gradient(p, rad[1] - rad[0], axis=1)
    return rad, jnp.median(drop, axis=0), jnp.mean(drop, axis=0)


def ring_radii(mean_pattern, r_min: float = 2.0, max_rings: int = 3) -> list[float]:
    """Radii (px) of the rings and disk edges of a centred mean pattern, strongest first.

    The local maxima of the azimuthal median of the radial intensity drop: an edge that
    runs all round (the direct disk, an amorphous ring's outer flank, a ring of Bragg
    disks in a mean over grains) survives the median; a Bragg disk on a few azimuths
    does not. Maxima under 10 % of the strongest, or within 3 px of a stronger one, are
    left out.
    """
    h, w = np.shape(mean_pattern)[-2:]
    r_max = min(h, w) / 2.0 - 2.0
    n_radii = 2 * int(round(r_max)) + 1
    rad, med, _ = (np.asarray(v) for v in _median_drop(jnp.asarray(mean_pattern, jnp.float32), 180, n_radii, float(r_max)))
    ok = rad >= r_min
    peaks = [i for i in range(1, len(med) - 1) if ok[i] and med[i] > 0 and med[i] >= med[i - 1] and med[i] > med[i + 1]]
    if not peaks:
        return []
    top = max(med[i] for i in peaks)
    out: list[float] = []
    for i in sorted(peaks, key=lambda i: -med[i]):
        if med[i] < 0.1 * top:
            break
        if all(abs(rad[i] - r) > 3.0 for r in out):
            out.append(float(rad[i]))
        if len(out) == max_rings:
            break
    return out


# ----------------------------------------------------------------------------- harmonic


@functools.partial(jax.jit, static_argnames=("n_angles", "n_radii", "r_max"))
def _quadrupole(image, d, r_lo, r_hi, n_angles: int, n_radii: int, r_max: float):
    """The residual ellipticity ``(e_cos, e_sin)`` of ``image`` corrected by ``d`` about the
    frame centre, its standard error and the misfit's share of the quadrupole."""
    # sqrt: Poisson noise of equal variance at every radius, and the direct disk no
    # longer outweighs the rings (any monotone map keeps I0(r / s(phi)) of that form).
    # Measured on drawn disks (r 5.6-20 px, ratio 1.08): sqrt recovers the ratio to 1e-4;
    # sqrt(I + 0.01 max) errs by 0.002-0.02 and the linear intensity by 0.03, the
    # estimate converging slowly where a flat disk's sharp edge is all the signal.
    x = jnp.sqrt(jnp.maximum(jnp.asarray(image, jnp.float32), 0.0) / jnp.maximum(jnp.max(image), 1e-30))
    c0 = jnp.asarray(frame_center(image.shape), jnp.float32)
    phi = 2 * jnp.pi * jnp.arange(n_angles, dtype=jnp.float32) / n_angles
    rad = jnp.linspace(0.0, r_max, n_radii, dtype=jnp.float32)
    dy, dx = jnp.sin(phi)[:, None] * rad, jnp.cos(phi)[:, None] * rad
    polar = sample(x, c0[0] + d[0, 0] * dy + d[0, 1] * dx, c0[1] + d[1, 0] * dy + d[1, 1] * dx, "cubic")
    prof = polar.mean(0)
    q_c = 2.0 * jnp.mean(polar * jnp.cos(2 * phi)[:, None], 0)
    q_s = 2.0 * jnp.mean(polar * jnp.sin(2 * phi)[:, None], 0)
    g = rad * jnp.gradient(prof, rad[1] - rad[0])
    # weight r: the number of pixels on the circle (the noise of q falls as 1/sqrt(r))
    wt = rad * ((rad >= r_lo) & (rad <= r_hi))
    den = jnp.maximum(jnp.sum(wt * g * g), 1e-30)
    e_c, e_s = -jnp.sum(wt * q_c * g) / den, -jnp.sum(wt * q_s * g) / den
    res2 = jnp.sum(wt * ((q_c + e_c * g) ** 2 + (q_s + e_s * g) ** 2)) / 2.0
    # independent radii: one per pixel of radius in the band
    n_eff = jnp.maximum(jnp.minimum(r_hi, r_max) - r_lo, 1.0)
    se = jnp.sqrt(res2 / jnp.maximum(n_eff - 1.0, 1.0) / den * (n_radii / r_max))
    share = res2 / jnp.maximum(jnp.sum(wt * (q_c**2 + q_s**2)) / 2.0, 1e-30)
    return e_c, e_s, se, share


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.maximum(w, 1e-30))) @ v.T


def harmonic_ellipse(mean_pattern, r_min: float = 1.5, r_max: float | None = None, iterations: int = 4) -> dict:
    """The ellipse from the quadrupole of the polar transform (see the module notes).

    Returns ``{ratio, angle, error, share}``: ``error`` the standard error of the
    ellipticity vector (``2 e`` per unit of ``e``), ``share`` the part of the given
    pattern's quadrupole that the scaled-profile model leaves unexplained (near 0 for
    rings, near 1 for the Bragg spots of one orientation). NaN where the iteration
    leaves axis ratios up to :data:`MAX_FIT_RATIO`.
    """
    img = jnp.asarray(mean_pattern, jnp.float32)
    h, w = img.shape
    top = min(h, w) / 2.0 - 2.0
    r_max = top if r_max is None else min(r_max, top)
    n_radii = 2 * int(round(top)) + 1
    d = np.eye(2)
    se = share = float("nan")
    for i in range(iterations):
        e_c, e_s, se, s = (float(v) for v in _quadrupole(img, jnp.asarray(d, jnp.float32), r_min, r_max, 256, n_radii, float(top)))
        share = s if i == 0 else share  # of the pattern as given: how much of its quadrupole is an ellipse's
        e = math.hypot(e_c, e_s)
        if not np.isfinite(e) or e >= 0.5:
            return {"ratio": float("nan"), "angle": float("nan"), "error": float("nan"), "share": share}
        # The residual distortion in the corrected frame, composed onto the estimate:
        # the pattern read at c0 + D D_r u is circular, and the symmetric matrix of the
        # same ellipse is sqrt(D D_r^2 D).
        d_r = np.asarray(ellipse_matrix((1 + e) / (1 - e), 0.5 * math.atan2(e_s, e_c)), np.float64)
        d = _sym_sqrt(d @ d_r @ d_r @ d)
        d /= math.sqrt(np.linalg.det(d))
    ev, vec = np.linalg.eigh(d)
    ratio = float(ev[1] / ev[0])  # D stretches the a-axis by sqrt(ratio), the b-axis by 1/sqrt(ratio)
    angle = math.atan2(vec[0, 1], vec[1, 1]) % math.pi
    if not ratio <= MAX_FIT_RATIO:
        return {"ratio": float("nan"), "angle": float("nan"), "error": float("nan"), "share": share}
    # A systematic part, 1 % of the ellipticity: the model ignores the blur that the
    # recentring adds after the distortion (isotropic, not scaled with it). Measured on a
    # synthetic cube of a sharp 18 px disk and a diffuse ring at ratio 1.08: 0.0008 low,
    # where the edge fit, which corrects its own blur, is 0.0002 off.
    return {"ratio": ratio, "angle": angle, "error": math.hypot(2.0 * se, HARMONIC_BIAS * (ratio - 1.0)), "share": share}


# ----------------------------------------------------------------------------- the choice


def _edge_candidate(fit: dict, n_angles: int) -> dict:
    a, b, angle = float(fit["a"]), float(fit["b"]), float(fit["angle"])
    frac, scale = float(fit["fraction"]), float(fit["scale"])
    if not (np.isfinite(a) and np.isfinite(b) and b > 0):
        return {"ok": False, "why": "fits no ellipse of axis ratio up to 2", "fraction": frac}
    radius = math.sqrt(a * b)
    if frac < MIN_EDGE_FRACTION:
        return {"ok": False, "why": f"an edge on only {100 * frac:.0f} % of the azimuths", "radius": radius, "fraction": frac}
    # r(phi) = R (1 + e cos 2(phi - theta)): least squares over n independent azimuths
    # gives e to scale * sqrt(2 / n) / R, and ratio - 1 = 2 e. Neighbouring azimuths
    # share pixels, and the noise of a broad edge's centroid is correlated along it: at
    # most one independent azimuth per edge width (at least 1 px) of circumference.
    n = min(float(fit["used"]), 2 * math.pi * radius * frac / max(float(fit["width"]), 1.0))
    err = 2.0 * max(scale, 0.01) * math.sqrt(2.0 / max(n, 1.0)) / radius
    return {"ok": True, "ratio": a / b, "angle": angle, "radius": radius, "error": err, "fraction": frac, "why": ""}


def _edge_candidates(img, cov, rings: list[float], r_min: float) -> dict[str, dict]:
    """The edge fit over the whole band and about each ring, from ``r_min`` px."""
    n_angles = 360
    fit = fit_ellipse_edge  # jitted; the band is traced, so every ring reuses one compilation
    cands = {"edge": _edge_candidate(fit(img, coverage=cov, r_min=r_min), n_angles)}
    for r in rings:
        band = jnp.asarray([max(r_min, 0.82 * r - 1.5), 1.22 * r + 1.5], jnp.float32)
        cands[f"ring@{r:.1f}"] = _edge_candidate(fit(img, coverage=cov, band=band, r_min=r_min), n_angles)
    return cands


def _harmonic_candidate(h: dict, rings: list[float], edges: dict[str, dict]) -> dict:
    """The harmonic estimate ``h`` as a candidate: valid where it is an ellipse, the
    pattern has a ring, and the scaled-profile model explains its quadrupole or an edge
    estimate agrees with it."""
    ok = bool(np.isfinite(h["ratio"]))
    why = "" if ok else "the quadrupole is no elliptical distortion of axis ratio up to 2"
    if ok and not rings:  # a flat or empty pattern has no quadrupole either: ratio 1 is no measurement
        ok, why = False, "no ring in the azimuthal median of the radial drop"
    if ok and h["share"] > SHARE_MAX:
        agree = [
            k
            for k, v in edges.items()
            if np.linalg.norm(_evec(h["ratio"], h["angle"]) - _evec(v["ratio"], v["angle"]))
            <= max(AGREE_SIGMAS * math.hypot(h["error"], v["error"]), AGREE_FLOOR)
        ]
        if not agree:
            ok = False
            why = f"{100 * h['share']:.0f} % of the quadrupole is no ellipse's, and no edge estimate agrees (Bragg spots?)"
    return {**h, "ok": ok, "why": why, "radius": rings[0] if rings else float("nan")}


def _seen_radius(coverage, shape) -> float:
    """The radius (px) of the largest disc about the frame centre in which every pixel
    was seen in 99 % of the frames (infinite without ``coverage``)."""
    if coverage is None:
        return math.inf
    cov = np.asarray(coverage)
    unseen = np.argwhere(cov < 0.99)
    if not unseen.size:
        return math.inf
    c0 = np.asarray(frame_center(shape))
    return float(np.sqrt(((unseen - c0) ** 2).sum(1)).min()) - 1.0


def estimate_ellipse(mean_pattern, coverage=None) -> EllipseEstimate:
    """Estimate the ellipse of a recentred mean pattern by the estimator that is most
    consistent with itself (see the module notes).

    Parameters
    ----------
    mean_pattern : (H, W) mean diffraction pattern, the beam centre at ((H-1)/2, (W-1)/2)
    coverage : (H, W) share of the averaged frames that saw each pixel (a masked
        detector's, or the frame edge's where a disk is cut off): the edge fits leave out
        the azimuths it hid; the harmonic estimate, which needs every azimuth, reads only
        the disc that every frame saw, and is not used where that disc ends within 3 px
        of the strongest ring's edge

    Returns
    -------
    EllipseEstimate (``ellipse`` None, with ``reason``, when nothing is a ring)
    """
    img = jnp.asarray(mean_pattern, jnp.float32)
    cov = None if coverage is None else jnp.asarray(coverage, jnp.float32)
    rings = ring_radii(np.asarray(img))
    # The harmonic estimate needs every azimuth: it reads the disc about the centre that
    # every frame saw (a disk cut off by the frame's edge, or a beam stop, ends it).
    r_seen = _seen_radius(coverage, img.shape)
    h = harmonic_ellipse(img, r_max=r_seen) if r_seen >= 3.0 and (not rings or r_seen >= 1.22 * rings[0] + 3.0) else None
    for r_min in EDGE_R_MINS:
        cands = _edge_candidates(img, cov, rings, r_min)
        edges = {k: v for k, v in cands.items() if v["ok"]}
        if h is not None:
            cands["harmonic"] = _harmonic_candidate(h, rings, edges)
        if any(v["ok"] for v in cands.values()):
            break
    valid = {k: v for k, v in cands.items() if v["ok"]}
    if not valid:
        seen = "; ".join(f"{k}: {v['why']}" for k, v in cands.items())
        if not rings and not edges:
            seen = "no radial edge anywhere (an empty or flat pattern?); " + seen
        return EllipseEstimate(None, "", float("nan"), float("nan"), cands, reason=seen)
    name = min(valid, key=lambda k: valid[k]["error"])
    best = valid[name]
    return EllipseEstimate(Ellipse(best["ratio"], best["angle"]), name, float(best["radius"]), float(best["error"]), cands)
