"""The classical ellipse estimate on the hard cases (issue 27, item 1): several
estimators, the most self-consistent chosen, and a refusal only where nothing is a ring.

Every pattern is drawn with a known ellipse: analytically (``disk_pattern`` maps each
pixel through the inverse of :func:`prenet_jax.ellipse_matrix`) or with the package's
warp (``distort``); the errors asserted are against that ellipse.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import prenet_jax as pj
from prenet_jax.ops import estimate_ellipse
from prenet_jax.training import distort

E = pj.Ellipse(1.06, math.radians(35.0))
C = (63.5, 63.5)


def _angle_err_deg(a: float, b: float) -> float:
    return math.degrees(abs((a - b + math.pi / 2) % math.pi - math.pi / 2))


def _dose(img: np.ndarray, electrons: float, seed: int = 0) -> np.ndarray:
    """The mean pattern of ``electrons`` counted electrons in all (Poisson), in the units of ``img``."""
    lam = img / img.sum() * electrons
    return (np.random.default_rng(seed).poisson(lam) / electrons * img.sum()).astype(np.float32)


def _errors(img, truth: pj.Ellipse, coverage=None):
    est = estimate_ellipse(img, coverage=coverage)
    assert est.ellipse is not None, est.reason
    return abs(est.ellipse.ratio - truth.ratio), _angle_err_deg(est.ellipse.angle, truth.angle), est


def _amorphous(shape, c, e: pj.Ellipse, first: float = 0.03, r1: float = 30.0, disk: float = 6.0) -> np.ndarray:
    """A direct disk (``disk`` px; 0: none) and two diffuse rings (first maximum ``first``
    times the disk, at ``r1`` px) on a falling background, all distorted by ``e``."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float64)
    dinv = np.linalg.inv(e.matrix())
    dr, dc = rr - c[0], cc - c[1]
    r = np.hypot(dinv[0, 0] * dr + dinv[0, 1] * dc, dinv[1, 0] * dr + dinv[1, 1] * dc)
    out = 0.5 * special.erfc((r - disk) / (math.sqrt(2) * 0.7)) if disk else np.zeros_like(r)
    out = out + first * np.exp(-0.5 * ((r - r1) / 5.0) ** 2) + 0.3 * first * np.exp(-0.5 * ((r - 1.8 * r1) / 8.0) ** 2)
    return (out + 0.5 * first * np.exp(-r / 25.0)).astype(np.float32)


# ----------------------------------------------------------------------------- crystals


@pytest.mark.parametrize("electrons", [None, 1e6])
@pytest.mark.parametrize(
    "name, lattice, intensity, orders, max_ratio, max_deg",
    [
        # Bragg disks as large as the direct disk, their edges 0.7 px from its edge (square)
        ("touching, square", ((0.0, 2.05), (2.05, 0.0)), 0.9, 1, 0.002, 0.3),
        # close-packed: every azimuth meets a neighbour within 1 px of the edge
        ("touching, hexagonal, dim", ((0.0, 2.0), (1.732, 1.0)), 0.3, 2, 0.008, 2.5),
        # overlapping the direct disk by 0.4 of its radius
        ("overlapping", ((0.0, 1.6), (1.386, 0.8)), 0.6, 2, 0.006, 2.5),
    ],
)
def test_bragg_disks_touching_or_overlapping_the_direct_disk(name, lattice, intensity, orders, max_ratio, max_deg, electrons):
    img = pj.disk_pattern(
        (128, 128), C, radius=14.0, ellipse=E, lattice=lattice, orders=orders, bragg_radius=14.0, bragg_intensity=intensity
    )
    if electrons:
        img = _dose(img, electrons)
    d_ratio, d_angle, est = _errors(img, E)
    assert d_ratio <= max_ratio, (name, d_ratio, est.method)
    assert d_angle <= max_deg, (name, d_angle, est.method)


@pytest.mark.parametrize("electrons", [None, 1e6])
@pytest.mark.parametrize("radius, max_ratio, max_deg", [(3.0, 0.012, 4.0), (4.0, 0.008, 2.0), (6.0, 0.003, 2.5)])
def test_nano_beam_disks_of_3_to_6_px(radius, max_ratio, max_deg, electrons):
    img = pj.disk_pattern((64, 64), (31.5, 31.5), radius=radius, ellipse=E, lattice=((0.0, 3.0), (2.6, 1.5)))
    if electrons:
        img = _dose(img, electrons)
    d_ratio, d_angle, _ = _errors(img, E)
    assert d_ratio <= max_ratio and d_angle <= max_deg, (d_ratio, d_angle)


def test_cut_off_disks():
    # partly beyond the largest circle inside the frame (a = 62.8 px in a 128 px frame)
    big = pj.disk_pattern((128, 128), C, radius=61.0, ellipse=E, lattice=None)
    d_ratio, d_angle, est = _errors(big, E)
    assert d_ratio <= 5e-4 and d_angle <= 0.1, (d_ratio, d_angle, est.method)
    d_ratio, d_angle, _ = _errors(_dose(big, 1e6), E)
    assert d_ratio <= 0.002 and d_angle <= 0.5, (d_ratio, d_angle)
    # cut by the detector's edge: the azimuths the coverage says no frame saw are left out
    cut = pj.disk_pattern((96, 96), (47.5, 47.5), radius=30.0, ellipse=E, lattice=None)
    cut[:, 72:] = 0.0
    cover = np.ones_like(cut)
    cover[:, 72:] = 0.0
    d_ratio, d_angle, est = _errors(cut, E, coverage=cover)
    assert d_ratio <= 5e-4 and d_angle <= 0.2, (d_ratio, d_angle)
    assert "harmonic" not in est.candidates  # it needs every azimuth


# ----------------------------------------------------------------------------- glasses


@pytest.mark.parametrize("electrons", [None, 1e6])
@pytest.mark.parametrize("disk", [6.0, 0.0])
def test_amorphous_rings_with_weak_first_maxima(disk, electrons):
    """A first maximum 3 % of the direct disk (or no direct disk: behind a beam stop)."""
    img = _amorphous((128, 128), C, E, first=0.03, disk=disk)
    if electrons:
        img = _dose(img, electrons)
    d_ratio, d_angle, est = _errors(img, E)
    # Behind a beam stop the ring's broad outer flank is the edge: the edge fit's window
    # (at most 8 px) cuts its bump, 0.002 off noise-free, and its own residuals do not
    # show it, so it wins the choice there (measured -0.0021; with the disk 3e-5).
    assert d_ratio <= ((2e-4 if disk else 0.003) if electrons is None else 0.002), (d_ratio, est.method)
    assert d_angle <= (0.05 if electrons is None else 0.8), (d_angle, est.method)


@pytest.mark.parametrize("electrons", [None, 1e6])
def test_a_pattern_distorted_with_the_package_warp(electrons):
    """Drawn round, then distorted by the training's warp (cubic, about the centre)."""
    clean = _amorphous((128, 128), C, pj.Ellipse.identity(), first=0.2)
    d, _ = distort(
        jnp.asarray(clean)[None],
        jnp.asarray(C, jnp.float32),
        jnp.zeros((1, 2)),
        jnp.asarray([E.ratio]),
        jnp.asarray([E.angle]),
        jnp.zeros(1),
        "cubic",
    )
    img = np.maximum(np.asarray(d[0]), 0.0)
    if electrons:
        img = _dose(img, electrons)
    d_ratio, d_angle, est = _errors(img, E)
    assert est.method == "harmonic"
    assert d_ratio <= (5e-4 if electrons is None else 0.002) and d_angle <= (0.1 if electrons is None else 1.0), (d_ratio, d_angle)


# ----------------------------------------------------------------------------- refusals


def _stripe():
    img = np.zeros((128, 128), np.float32)
    img[56:72, :] = 100.0
    return img


def _wrong_centres():
    """The mean of disks recentred on centres that were wrong along a line (40 px)."""
    acc = np.zeros((128, 128), np.float32)
    for s in np.linspace(-20.0, 20.0, 41):
        acc += pj.disk_pattern((128, 128), (63.5, 63.5 + s), radius=10.0, lattice=None)
    return acc / 41


@pytest.mark.parametrize("what", ["stripe", "wrong centres", "empty"])
def test_what_is_no_ring_is_still_refused(what):
    img = {"stripe": _stripe, "wrong centres": _wrong_centres, "empty": lambda: np.zeros((64, 64), np.float32)}[what]()
    est = estimate_ellipse(img)
    assert est.ellipse is None
    assert "fits no ellipse of axis ratio up to 2" in est.reason or "no radial edge" in est.reason, est.reason
    with pytest.raises(ValueError, match="could not fit an ellipse.*not an ellipse.*seen: "):
        pj.Pipeline.classical().estimate_ellipse(img)


# ----------------------------------------------------------------------------- abTEM

RISK_SIM = Path.home() / ".cache/prenet-jax/risk_sim"


@pytest.mark.skipif(not (RISK_SIM / "manifest.csv").exists(), reason="no cached abTEM run (benchmarks/ellipse_refusals.py)")
@pytest.mark.parametrize("ratio, angle", [(1.05, 1.0), (1.03, 0.3), (1.02, 2.8)])
def test_abtem_crystal_means_that_were_refused(ratio, angle):
    """The mean of one abTEM task (Au, direct disk 37 px, Bragg disks overlapping it),
    distorted by the evaluation's warp, 1e6 electrons: the edge fit over the whole frame
    refused all three (axis ratio over 2); measured now: ratio within 0.0004-0.0018,
    angle 0.75-1.9 deg."""
    from prenet_jax.data import PatternStore

    store = PatternStore(RISK_SIM, dataset="patterns", split=None)
    try:
        idx = [i for i, r in enumerate(store.rows) if r["task"] == "18"]
        clean, zero = store.get(idx)
    finally:
        store.close()
    truth = pj.Ellipse(ratio, angle)
    c0 = np.asarray([127.5, 127.5], np.float32)
    d, _ = distort(
        jnp.asarray(clean.mean(0))[None],
        jnp.asarray(zero[0]),
        jnp.asarray(c0 - zero[0])[None],
        jnp.asarray([truth.ratio]),
        jnp.asarray([truth.angle]),
        jnp.zeros(1),
        "cubic",
    )
    img = _dose(np.maximum(np.asarray(d[0]), 0.0), 1e6, seed=4)
    d_ratio, d_angle, est = _errors(img, truth)
    assert d_ratio <= 0.003 and d_angle <= 2.5, (d_ratio, d_angle, est.method)


def test_the_cli_refuses_a_stripe_scan_with_a_message_and_writes_nothing(tmp_path):
    from _helpers import run_preprocess

    cube = np.zeros((4, 4, 64, 64), np.float32)
    cube[..., 28:36, :] = 50.0
    np.save(tmp_path / "s.npy", np.random.default_rng(0).poisson(cube + 0.01).astype(np.uint16))
    rc, _, err = run_preprocess(tmp_path / "s.npy", "-o", tmp_path / "o.h5")
    assert rc == 2 and err.startswith("error: could not fit an ellipse") and "Traceback" not in err
    assert "seen: edge: fits no ellipse" in err and "--no-ellipse" in err
    assert not (tmp_path / "o.h5").exists()


def test_a_disk_cut_off_by_the_frame_edge_is_read_through_the_pipelines_coverage():
    # A frame whose disk centre lies 20 px from its left edge, recentred: the 30 px disk's
    # left part was never on the detector and is zero-filled, a straight edge that the
    # pipeline's coverage (no mask: the frame's own extent, moved with the centre) hides.
    shape, centre = (96, 96), np.array([[47.5, 20.0]])
    cover = pj.Pipeline.classical().coverage(centre, shape)
    assert cover.shape == shape and np.all(cover[:, :27] == 0.0) and np.all(cover[:, 28:] == 1.0)
    assert pj.Pipeline.classical().coverage(centre, shape, matrix=np.eye(2))[:, 28:].min() > 0.99  # the warped path agrees
    mean = pj.disk_pattern(shape, (47.5, 47.5), radius=30.0, ellipse=E, lattice=None) * cover
    d_ratio, d_angle, est = _errors(mean, E, coverage=cover)
    assert d_ratio <= 1e-3 and d_angle <= 0.5, (d_ratio, d_angle, est.method)
    # without the coverage the fill's edge is read as the disk's on a third of the azimuths
    blind = estimate_ellipse(mean)
    assert blind.ellipse is None or abs(blind.ellipse.ratio - E.ratio) > 3 * d_ratio
