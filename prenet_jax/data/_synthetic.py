"""Analytic synthetic diffraction patterns with known centre, ellipse and dose.

Used by the tests, the demo and the benchmarks: every pattern is exactly
Friedel-symmetric about the centre we put it at, so any estimator can be scored
against a known truth.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..conventions import Ellipse

__all__ = ["disk_pattern", "synthetic_cube"]


def disk_pattern(
    shape: tuple[int, int],
    center: tuple[float, float],
    radius: float = 10.0,
    ellipse: Ellipse | None = None,
    lattice: tuple[tuple[float, float], tuple[float, float]] | None = ((0.0, 2.6), (2.25, 1.3)),
    orders: int = 2,
    bragg_radius: float | None = None,
    bragg_intensity: float = 0.15,
    edge: float = 0.7,
) -> np.ndarray:
    """A nano-beam pattern: a direct disk and Bragg disks, max intensity 1.

    Parameters
    ----------
    shape : (H, W)
    center : (row, col) of the zero angle
    radius : direct-disk radius in px (before the ellipse)
    ellipse : distortion applied about ``center`` (area-preserving)
    lattice : two reciprocal vectors in units of ``radius`` (row, col); None for the
        direct disk alone
    orders : Bragg disks up to this multiple of each vector
    bragg_radius : px; default ``0.6 * radius``
    bragg_intensity : peak of the first-order disks, falling off with |g|
    edge : standard deviation (px) of the Gaussian blur of the disk edges (the
        detector's point spread); it keeps the sampled pattern free of aliasing, so
        its centre of mass is the true centre to ~1e-3 px

    Returns
    -------
    (H, W) float32, exactly symmetric about ``center``.
    """
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    dr, dc = rows - center[0], cols - center[1]
    if ellipse is not None:
        dinv = np.linalg.inv(ellipse.matrix())
        dr, dc = dinv[0, 0] * dr + dinv[0, 1] * dc, dinv[1, 0] * dr + dinv[1, 1] * dc

    def disk(d, r):
        return 0.5 * special.erfc((d - r) / (np.sqrt(2.0) * edge))

    out = disk(np.hypot(dr, dc), radius)
    if lattice is not None:
        br = 0.6 * radius if bragg_radius is None else bragg_radius
        g1, g2 = (np.asarray(g) * radius for g in lattice)
        for i in range(-orders, orders + 1):
            for j in range(-orders, orders + 1):
                if i == 0 and j == 0:
                    continue
                g = i * g1 + j * g2
                amp = bragg_intensity / (1.0 + 0.5 * (abs(i) + abs(j) - 1))
                out += amp * disk(np.hypot(dr - g[0], dc - g[1]), br)
    return out.astype(np.float32)


def synthetic_cube(
    scan: tuple[int, int] = (8, 8),
    shape: tuple[int, int] = (64, 64),
    radius: float = 8.0,
    ellipse: Ellipse | None = None,
    descan: tuple[float, float, float, float] = (0.15, -0.1, 0.08, 0.12),
    jitter: float = 0.5,
    dose: float | None = None,
    seed: int = 0,
    lattice=((0.0, 2.6), (2.25, 1.3)),
) -> dict[str, np.ndarray]:
    """A 4D cube with a linear descan plane, random jitter, one ellipse and optional noise.

    Parameters
    ----------
    scan : (Rx, Ry)
    shape : (H, W)
    descan : centre drift in px per scan step: (d_row/d_x, d_row/d_y, d_col/d_x, d_col/d_y)
    jitter : standard deviation (px) of the random part of the centre
    dose : electrons per pattern (Poisson); None for noise-free
    seed : reproducibility

    Returns
    -------
    dict with ``cube`` (Rx, Ry, H, W) float32 (counts when ``dose`` is set),
    ``centers`` (Rx, Ry, 2) true centres, ``ideal`` (Rx, Ry, H, W) noise-free,
    centred, undistorted patterns in the same units, and ``ellipse``.
    """
    rng = np.random.default_rng(seed)
    rx, ry = scan
    c0 = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    ix, iy = np.meshgrid(np.arange(rx) - (rx - 1) / 2, np.arange(ry) - (ry - 1) / 2, indexing="ij")
    centers = np.stack([c0[0] + descan[0] * ix + descan[1] * iy, c0[1] + descan[2] * ix + descan[3] * iy], -1)
    centers = centers + jitter * rng.standard_normal(centers.shape)
    cube = np.empty((rx, ry) + tuple(shape), np.float32)
    ideal_one = disk_pattern(shape, tuple(c0), radius, None, lattice)
    for i in range(rx):
        for j in range(ry):
            cube[i, j] = disk_pattern(shape, tuple(centers[i, j]), radius, ellipse, lattice)
    scale = 1.0
    if dose is not None:
        scale = dose / float(cube.reshape(rx * ry, -1).sum(1).mean())
        cube = rng.poisson(cube * scale).astype(np.float32)
    ideal = np.broadcast_to(ideal_one * np.float32(scale), cube.shape).copy()
    return {"cube": cube, "centers": centers, "ideal": ideal, "ellipse": ellipse or Ellipse.identity()}
