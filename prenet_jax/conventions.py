"""Conventions every stage shares: the elliptical distortion (one value type and its
conversions) and the per-frame quality flags.

Convention (used by every function of the package)
--------------------------------------------------
The observed ring has semi-axes ``a >= b``; ``ratio = a / b >= 1``; ``angle``
(theta) in ``[0, pi)`` is the direction of the a-axis, the unit vector
``(cos theta, sin theta)`` in ``(x = col, y = row)`` components, so in the
``(row, col)`` index order of the arrays it is ``(sin theta, cos theta)``.

The distortion is area-preserving: the matrix ``D`` maps the undistorted circle
of radius ``sqrt(a b)`` onto the observed ellipse,
``D = s u u^T + (1/s) (I - u u^T)`` with ``s = sqrt(ratio)`` and ``u`` the
a-axis unit vector. ``D`` is symmetric with determinant 1. The correction
samples the observed frame at ``c + D (q - c)`` for every output pixel ``q``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "FLAG_NONFINITE",
    "FLAG_EMPTY",
    "FLAG_SATURATED",
    "FLAG_NEGATIVE",
    "FLAG_REFINE",
    "FLAG_EDGE",
    "FLAG_DESCAN",
    "FLAG_NO_BEAM",
    "EDGE_LOSS_FLAG",
    "FLAG_NAMES",
    "FLAGS_EXCLUDED",
    "Ellipse",
    "normalize_angle",
    "ellipse_matrix",
    "ellipse_from_matrix",
    "ratio_angle_to_axes",
    "axes_to_ratio_angle",
]

# ---- per-frame quality flags: a bit mask (uint8) in every result and output file
FLAG_NONFINITE = 1  #: the frame had NaN/Inf pixels (set to 0 before processing)
FLAG_EMPTY = 2  #: the frame has no counts: its centre is the frame centre
FLAG_SATURATED = 4  #: a pixel reached the saturation level (detector count limit)
FLAG_NEGATIVE = 8  #: negative pixels (read noise, dark subtraction): counted as 0
FLAG_REFINE = 16  #: the centre refinement failed: the frame keeps the estimate
FLAG_EDGE = 32  #: over ``EDGE_LOSS_FLAG`` of the frame's counts were moved out of the frame
#: its own centre is farther than k robust sigmas from the fitted descan model (``--descan``)
FLAG_DESCAN = 64
#: no direct beam found (:func:`prenet_jax.ops.direct_beam_found`): the frame's centre is no beam centre
FLAG_NO_BEAM = 128
#: Fraction of a frame's counts moved out of the output frame by the warp above which
#: the frame is flagged ``FLAG_EDGE`` (1 %: it biases virtual-detector intensities).
EDGE_LOSS_FLAG = 0.01
FLAG_NAMES = {
    FLAG_NONFINITE: "NaN/Inf pixels",
    FLAG_EMPTY: "empty",
    FLAG_SATURATED: "saturated",
    FLAG_NEGATIVE: "negative pixels",
    FLAG_REFINE: "centre refinement failed",
    FLAG_EDGE: "counts lost at the frame edge",
    FLAG_DESCAN: "centre off the descan model",
    FLAG_NO_BEAM: "no direct beam",
}
#: Frames with these flags are kept out of the mean patterns and the centre statistics.
FLAGS_EXCLUDED = FLAG_NONFINITE | FLAG_EMPTY


def normalize_angle(angle):
    """Map an axis direction to ``[0, pi)`` (an ellipse is unchanged by ``theta + pi``).

    Works on Python floats, numpy arrays (returns numpy) and jax arrays (returns jax).
    """
    xp = jnp if isinstance(angle, jax.Array) else np
    out = xp.mod(angle, xp.pi)
    # mod can round a tiny negative input up to pi itself.
    out = xp.where(out >= xp.pi, 0.0, out)
    return float(out) if xp is np and np.ndim(out) == 0 else out


def ratio_angle_to_axes(ratio, angle, radius):
    """``(ratio, theta)`` and the circle radius ``sqrt(a b)`` -> ``(a, b, theta)``."""
    s = np.sqrt(ratio)
    return radius * s, radius / s, normalize_angle(angle)


def axes_to_ratio_angle(a, b, angle):
    """``(a, b, theta)`` (either axis may be the larger) -> ``(ratio >= 1, theta in [0, pi))``.

    When ``b > a`` the roles swap and the angle turns by ``pi / 2``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError(f"ellipse semi-axes must be positive, got a={a}, b={b}")
    swap = b > a
    ratio = np.where(swap, b / a, a / b)
    angle = normalize_angle(np.where(swap, np.asarray(angle) + np.pi / 2, angle))
    if ratio.ndim == 0:
        return float(ratio), float(angle)
    return ratio, angle


def ellipse_matrix(ratio, angle):
    """The 2x2 distortion matrix ``D`` in ``(row, col)`` order (jit- and grad-friendly).

    Parameters
    ----------
    ratio : (...,) array
        ``a / b``; values below 1 are allowed here (they mean the axes swap).
    angle : (...,) array
        Direction of the a-axis in radians, measured from +x (col) towards +y (row).

    Returns
    -------
    (..., 2, 2) array, symmetric with unit determinant.
    """
    ratio = jnp.asarray(ratio, dtype=jnp.float32)
    angle = jnp.asarray(angle, dtype=jnp.float32)
    s = jnp.sqrt(ratio)
    u = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1)  # (row, col)
    uu = u[..., :, None] * u[..., None, :]
    eye = jnp.eye(2, dtype=jnp.float32)
    return s[..., None, None] * uu + (1.0 / s)[..., None, None] * (eye - uu)


def ellipse_from_matrix(matrix) -> Ellipse:
    """Inverse of :func:`ellipse_matrix` for one symmetric positive-definite matrix.

    The determinant is divided out, so any positive multiple of ``D`` gives the
    same ``(ratio, angle)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 2):
        raise ValueError(f"expected a (2, 2) matrix, got shape {m.shape}")
    if not np.allclose(m, m.T, rtol=1e-5, atol=1e-7):
        raise ValueError("the ellipse matrix must be symmetric (a pure stretch, no rotation)")
    w, v = np.linalg.eigh(m)  # ascending eigenvalues
    if w[0] <= 0:
        raise ValueError(f"the ellipse matrix must be positive definite, eigenvalues {w}")
    ratio = float(w[1] / w[0])
    u = v[:, 1]  # (row, col) components of the a-axis
    angle = normalize_angle(math.atan2(u[0], u[1]))
    return Ellipse(ratio=ratio, angle=angle)


@dataclasses.dataclass(frozen=True)
class Ellipse:
    """An elliptical distortion in the package convention (see the module docstring).

    Attributes
    ----------
    ratio : float
        ``a / b >= 1``; 1 means no distortion.
    angle : float
        Direction of the a-axis in ``[0, pi)``, radians from +x (col) towards +y (row).
    """

    ratio: float = 1.0
    angle: float = 0.0

    def __post_init__(self):
        ratio, angle = float(self.ratio), float(self.angle)
        if not (math.isfinite(ratio) and math.isfinite(angle)):
            raise ValueError(f"ellipse ratio and angle must be finite, got ratio={ratio}, angle={angle}")
        if ratio <= 0:
            raise ValueError(f"ellipse ratio must be positive, got {ratio}")
        if ratio < 1.0:  # same ellipse with the axes named the other way round
            ratio, angle = 1.0 / ratio, angle + math.pi / 2
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "angle", normalize_angle(angle))

    @classmethod
    def identity(cls) -> Ellipse:
        return cls(1.0, 0.0)

    @classmethod
    def from_axes(cls, a: float, b: float, angle: float) -> Ellipse:
        """From semi-axes and the direction of ``a`` (either axis may be the larger)."""
        ratio, angle = axes_to_ratio_angle(a, b, angle)
        return cls(ratio, angle)

    @classmethod
    def from_cos_sin(cls, cos2, sin2, ratio) -> Ellipse:
        """From the regression target ``(cos 2 theta, sin 2 theta, ratio)``."""
        return cls(float(ratio), 0.5 * math.atan2(float(sin2), float(cos2)))

    def axes(self, radius: float) -> tuple[float, float, float]:
        """``(a, b, theta)`` of the ellipse whose undistorted circle has ``radius = sqrt(a b)``."""
        return ratio_angle_to_axes(self.ratio, self.angle, radius)

    def matrix(self) -> np.ndarray:
        """The distortion matrix ``D`` (float64, ``(row, col)`` order)."""
        s = math.sqrt(self.ratio)
        u = np.array([math.sin(self.angle), math.cos(self.angle)])
        uu = np.outer(u, u)
        return s * uu + (np.eye(2) - uu) / s

    def cos_sin(self) -> tuple[float, float, float]:
        """``(cos 2 theta, sin 2 theta, ratio)``: the unambiguous regression target."""
        return math.cos(2 * self.angle), math.sin(2 * self.angle), self.ratio
