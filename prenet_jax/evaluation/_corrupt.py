"""Corrupting the clean held-out patterns with a known truth, one input per table.

Every geometry is drawn from ``EvalConfig.seed`` alone, so it is the same at every
dose and only the noise changes with the dose. The distortion and the noise are those
of the training's augmentation (:mod:`prenet_jax.corruption`).

- table 1 (denoising): :func:`corrupt_scans`, scan patches sharing one ellipse per patch;
- table 2 (centres): :func:`corrupt_single`, single patterns shifted, rotated, distorted;
- table 3 (ellipse): :func:`ellipse_samples` (recentred mean patterns under random
  ellipses) and :func:`noisy_means` (their noise at a dose);
- table 4 (end to end): :func:`e2e_cube`, a small scan cube from one patch's frames.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..conventions import Ellipse
from ..corruption import AugmentConfig, augment
from ..corruption import distort as _distort_eager
from ..corruption import poisson as _poisson_eager
from ..ops import frame_center
from ._config import EvalConfig
from ._evalset import EvalSet

__all__ = [
    "DETECTOR_CASES",
    "batches",
    "corrupt_grid",
    "corrupt_scans",
    "corrupt_single",
    "disk_radii",
    "grid_geometry",
    "distort",
    "e2e_cube",
    "ellipse_samples",
    "noisy_means",
    "poisson",
]

# Jitted once here: eager calls would run the cubic warp op by op.
distort = jax.jit(_distort_eager, static_argnums=(6,))
poisson = jax.jit(_poisson_eager)


def batches(n: int, size: int):
    """``(start, stop)`` of consecutive batches of at most ``size`` out of ``n`` items."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _dose_key(key: jax.Array, dose: float) -> jax.Array:
    """A noise key per dose (the dose's log, to 1e-3, so 1e3 and 1e4 differ)."""
    return jax.random.fold_in(key, round(math.log(dose) * 1000))


# ----------------------------------------------------------------------------- table 2: single patterns


def corrupt_single(es: EvalSet, dose: float, cfg: EvalConfig, **effects) -> dict[str, np.ndarray]:
    """The centre table's input: every single pattern shifted, rotated, distorted and noisy.

    The geometry of pattern ``i`` depends on ``(seed, i)`` only, so it is the same at
    every dose (and with every effect). ``effects``: fields of :class:`AugmentConfig`
    that add what real detectors do (table 5: :data:`DETECTOR_CASES`). Returns ``noisy,
    target (N, S, S)``, ``center (N, 2)`` (NaN where a frame has no beam), ``ratio,
    angle (N,)``, ``beam (N,)``.
    """
    aug = AugmentConfig(
        max_shift=cfg.max_shift,
        ratio_range=cfg.ratio_range,
        rotate=True,
        scale_range=(1.0, 1.0),
        dose_range=(dose, dose),
        read_noise_range=(0.0, 0.0),
        method="cubic",
        **effects,
    )
    n = es.single.shape[0]
    out = {k: [] for k in ("noisy", "target", "center", "ratio", "angle", "beam")}
    base = jax.random.key(cfg.seed)
    for start, stop in batches(n, cfg.batch):
        # The key depends on the batch only: augment draws the geometry from it, so the
        # geometry is the same at every dose (only the noise's mean changes).
        key = jax.random.fold_in(base, start)
        a, info = augment(key, jnp.asarray(es.single[start:stop]), jnp.asarray(es.single_zero[start:stop]), aug, return_info=True)
        out["noisy"].append(np.asarray(a.noisy))
        out["target"].append(np.asarray(a.target))
        out["center"].append(np.asarray(a.center))
        out["ratio"].append(np.asarray(a.ellipse[0]))
        out["angle"].append(np.asarray(a.ellipse[1]))
        out["beam"].append(np.asarray(info["beam"]) if "beam" in info else np.ones(stop - start, bool))
    return {k: np.concatenate(v) for k, v in out.items()}


#: Table 5: each effect of real detectors on every pattern, one row group each
#: (:mod:`prenet_jax.corruption`); "none" is the same patterns without one. Panel gaps
#: and hot pixels are left out: they sit at fixed pixels, which a file run finds and
#: masks (``prenet-jax preprocess``'s mask stage) and these per-pattern methods do not.
DETECTOR_CASES = {
    "none": {},
    "saturated": {"saturation_fraction": 1.0},
    "cut off by the edge": {"edge_fraction": 1.0},
    "Bragg brighter than the direct beam": {"bragg_fraction": 1.0},
    "Kikuchi bands and diffuse lobes": {"kikuchi_fraction": 1.0},
    "no beam": {"no_beam_fraction": 1.0},
}


def disk_radii(es: EvalSet) -> np.ndarray:
    """Direct-disk radius (px) per single pattern: from the simulation's metadata, else
    measured as the radius holding half of the 0.2-max area of the clean pattern."""
    r = es.info.get("disk_radius_px")
    if r is not None and len(r) == es.single.shape[0]:
        return np.asarray(r, np.float64)
    area = (es.single >= 0.2 * es.single.max(axis=(1, 2), keepdims=True)).sum(axis=(1, 2))
    return np.sqrt(area / math.pi)


# ----------------------------------------------------------------------------- table 1: scan patches


def _scan_geometry(es: EvalSet, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Per patch: one offset, ellipse and rotation; per frame: a jitter."""
    m, f = es.scans.shape[:2]
    rng = np.random.default_rng([cfg.seed, 0x5CA7])
    offset = rng.uniform(-cfg.scan_shift, cfg.scan_shift, size=(m, 1, 2))
    shift = offset + cfg.scan_jitter * rng.standard_normal((m, f, 2))
    return {
        "shift": shift.astype(np.float32),
        "ratio": rng.uniform(*cfg.ratio_range, size=m).astype(np.float32),
        "angle": rng.uniform(0, math.pi, size=m).astype(np.float32),
        "rotation": rng.uniform(0, 2 * math.pi, size=m).astype(np.float32),
    }


def corrupt_scans(es: EvalSet, dose: float, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The denoising table's input: patches ``(M, F, S, S)`` sharing the ellipse and
    rotation of their patch, shifted by the patch offset plus a jitter, Poisson noise at
    ``dose``. Returns ``noisy, target (M, F, S, S)``."""
    g = _scan_geometry(es, cfg)
    m, f = es.scans.shape[:2]
    noisy = np.empty(es.scans.shape, np.float32)
    target = np.empty(es.scans.shape, np.float32)
    key = _dose_key(jax.random.key(cfg.seed + 1), dose)
    ones = jnp.ones((f,), jnp.float32)
    for i in range(m):
        d, _ = distort(
            jnp.asarray(es.scans[i]),
            jnp.asarray(es.scans_zero[i]),
            jnp.asarray(g["shift"][i]),
            ones * g["ratio"][i],
            ones * g["angle"][i],
            ones * g["rotation"][i],
            "cubic",
        )
        expected = jnp.maximum(d, 0.0) * dose
        target[i] = np.asarray(expected)
        noisy[i] = np.asarray(poisson(jax.random.fold_in(key, i), expected))
    return {"noisy": noisy, "target": target}


def grid_geometry(es: EvalSet, cfg: EvalConfig) -> np.ndarray:
    """``(G, n, n, 2)`` the shift of every frame of every raster scan: the descan plane of
    the end-to-end cubes (``e2e_descan`` px per scan step, about the scan's centre) plus a
    Gaussian jitter of ``scan_jitter`` px per frame."""
    g, n = es.grids.shape[:2]
    rng = np.random.default_rng([cfg.seed, 0x6A1D])
    ix, iy = np.meshgrid(np.arange(n) - (n - 1) / 2, np.arange(n) - (n - 1) / 2, indexing="ij")
    dr = cfg.e2e_descan
    plane = np.stack([dr[0] * ix + dr[1] * iy, dr[2] * ix + dr[3] * iy], -1)
    return (plane[None] + cfg.scan_jitter * rng.standard_normal((g, n, n, 2))).astype(np.float32)


def corrupt_grid(es: EvalSet, index: int, dose: float, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Raster scan ``index`` of the set as a recorded scan: every frame moved by its
    descan (:func:`grid_geometry`), Poisson noise at ``dose`` electrons per frame.
    Returns ``noisy, target (n, n, S, S)`` (the target: the expected counts) and
    ``centers (n, n, 2)``, the zero angle in each frame."""
    clean = es.grids[index]
    n, s = clean.shape[0], clean.shape[-2:]
    shift = grid_geometry(es, cfg)[index].reshape(-1, 2)
    ones = jnp.ones((n * n,), jnp.float32)
    d, c = distort(
        jnp.asarray(clean.reshape(-1, *s)), jnp.asarray(es.grids_zero[index]), jnp.asarray(shift), ones, ones * 0, ones * 0, "cubic"
    )
    expected = jnp.maximum(d, 0.0) * dose
    key = jax.random.fold_in(_dose_key(jax.random.key(cfg.seed + 3), dose), index)
    noisy = poisson(key, expected)
    return {
        "noisy": np.asarray(noisy).reshape(n, n, *s),
        "target": np.asarray(expected).reshape(n, n, *s),
        "centers": np.asarray(c).reshape(n, n, 2),
    }


# ----------------------------------------------------------------------------- table 3: mean patterns


def _group_means(es: EvalSet, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per task: the mean clean pattern averaged over ``rotations`` in-plane rotations about
    the zero angle (rings, as in the mean of a scan over many grains). Returns
    ``(means (G, S, S), zero (G, 2), kind (G,), radius (G,))``."""
    groups = np.unique(es.single_group)
    radii = disk_radii(es)
    means, zeros, kinds, rad = [], [], [], []
    k = max(1, cfg.rotations)
    ones = jnp.ones((k,), jnp.float32)
    for gi, g in enumerate(groups):
        idx = np.flatnonzero(es.single_group == g)
        mean = es.single[idx].mean(axis=0)
        z = es.single_zero[idx[0]]
        start = np.random.default_rng([cfg.seed, 0xE11, gi]).uniform(0, 2 * math.pi)
        phi = (start + 2 * math.pi * np.arange(k) / k).astype(np.float32)
        rot, _ = distort(
            jnp.broadcast_to(jnp.asarray(mean), (k,) + mean.shape),
            jnp.asarray(z),
            jnp.zeros((k, 2)),
            ones,
            ones * 0,
            jnp.asarray(phi),
            "cubic",
        )
        means.append(np.asarray(jnp.maximum(rot, 0).mean(0)))
        zeros.append(z)
        kinds.append(es.single_kind[idx[0]])
        rad.append(float(np.median(radii[idx])))
    return np.stack(means), np.stack(zeros), np.asarray(kinds), np.asarray(rad)


def ellipse_samples(es: EvalSet, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The ellipse table's noise-free input: each task's mean pattern under
    ``ellipses_per_group`` random ellipses, its zero angle on the frame centre.

    Returns ``expected (N, S, S)``, ``ratio, angle, kind, radius (N,)`` (``radius``: the
    task's median direct-disk radius, px).
    """
    means, zeros, kinds, rad = _group_means(es, cfg)
    g, e = means.shape[0], max(1, cfg.ellipses_per_group)
    rng = np.random.default_rng([cfg.seed, 0xE1])
    ratio = rng.uniform(*cfg.ratio_range, size=(g, e)).astype(np.float32)
    angle = rng.uniform(0, math.pi, size=(g, e)).astype(np.float32)
    c0 = np.asarray(frame_center(means.shape[-2:]), np.float32)
    out = np.empty((g, e) + means.shape[-2:], np.float32)
    ones = jnp.ones((e,), jnp.float32)
    for i in range(g):
        d, _ = distort(
            jnp.broadcast_to(jnp.asarray(means[i]), (e,) + means.shape[-2:]),
            jnp.asarray(zeros[i]),
            jnp.broadcast_to(jnp.asarray(c0 - zeros[i]), (e, 2)),
            jnp.asarray(ratio[i]),
            jnp.asarray(angle[i]),
            ones * 0,
            "cubic",
        )
        out[i] = np.asarray(jnp.maximum(d, 0))
    return {
        "expected": out.reshape(g * e, *means.shape[-2:]),
        "ratio": ratio.ravel(),
        "angle": angle.ravel(),
        "kind": np.repeat(kinds, e),
        "radius": np.repeat(rad, e),
    }


def noisy_means(expected: np.ndarray, dose: float, cfg: EvalConfig) -> np.ndarray:
    """Mean patterns with the noise of ``mean_frames`` frames at ``dose``: Poisson counts
    of the sum over the frames, divided by their number."""
    key = _dose_key(jax.random.key(cfg.seed + 2), dose)
    noisy = np.empty(expected.shape, np.float32)
    for start, stop in batches(expected.shape[0], cfg.batch):
        lam = jnp.asarray(expected[start:stop] * (dose * cfg.mean_frames))
        noisy[start:stop] = np.asarray(poisson(jax.random.fold_in(key, start), lam)) / cfg.mean_frames
    return noisy


# ----------------------------------------------------------------------------- table 4: cubes


def e2e_cube(clean: np.ndarray, zero: np.ndarray, dose: float, cfg: EvalConfig, seed: int) -> dict[str, np.ndarray]:
    """A scan cube from the frames of one patch: descan plane + jitter + one ellipse + one
    rotation + Poisson noise; the ideal is the rotated clean pattern with its zero angle
    on the frame centre, undistorted, in the same units.

    Returns ``cube, ideal (Rx, Ry, S, S)``, ``centers (Rx, Ry, 2)`` and ``ellipse``.
    """
    rx, ry = cfg.e2e_scan
    n = rx * ry
    frames = clean[np.arange(n) % clean.shape[0]]
    rng = np.random.default_rng([seed, 0xE2E])
    ix, iy = np.meshgrid(np.arange(rx) - (rx - 1) / 2, np.arange(ry) - (ry - 1) / 2, indexing="ij")
    dr = cfg.e2e_descan
    c0 = np.asarray(frame_center(clean.shape[-2:]))
    centers = np.stack([c0[0] + dr[0] * ix + dr[1] * iy, c0[1] + dr[2] * ix + dr[3] * iy], -1).reshape(n, 2)
    centers = centers + cfg.e2e_jitter * rng.standard_normal(centers.shape)
    rot = float(rng.uniform(0, 2 * math.pi))
    ratio, angle = cfg.e2e_ellipse
    ones = jnp.ones((n,), jnp.float32)
    z = jnp.asarray(zero, jnp.float32)
    d, c = distort(jnp.asarray(frames), z, jnp.asarray(centers - zero, jnp.float32), ones * ratio, ones * angle, ones * rot, "cubic")
    ideal, _ = distort(
        jnp.asarray(frames), z, jnp.broadcast_to(jnp.asarray(c0 - zero, jnp.float32), (n, 2)), ones, ones * 0, ones * rot, "cubic"
    )
    noisy = poisson(jax.random.key(seed), jnp.maximum(d, 0) * dose)
    s = clean.shape[-2:]
    return {
        "cube": np.asarray(noisy).reshape(rx, ry, *s),
        "ideal": (np.asarray(jnp.maximum(ideal, 0)) * dose).reshape(rx, ry, *s),
        "centers": np.asarray(c).reshape(rx, ry, 2),
        "ellipse": Ellipse(ratio, angle),
    }
