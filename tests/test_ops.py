"""Geometry ops against independent references (scipy, analytic patterns, finite differences)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

import prenet_jax as pj
from prenet_jax import ops


def _smooth_image(rng, shape=(48, 56), sigma=2.0):
    return ndi.gaussian_filter(rng.random(shape), sigma).astype(np.float32)


def test_affine_warp_matches_scipy_order1(rng):
    img = rng.random((40, 50)).astype(np.float32)
    for _ in range(3):
        m = pj.Ellipse(rng.uniform(1, 1.3), rng.uniform(0, np.pi)).matrix().astype(np.float32)
        off = rng.uniform(-3, 3, 2).astype(np.float32)
        ours = np.asarray(ops.affine_warp(img, m, off, "linear"))
        ref = ndi.affine_transform(img, m, off, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_translate_direction_and_integer_shift(rng):
    img = rng.random((20, 24)).astype(np.float32)
    for method in ("linear", "cubic", "fourier"):
        out = np.asarray(ops.translate(img, (3.0, -2.0), method))
        # content moves by +shift: out[r, c] = img[r - 3, c + 2]
        np.testing.assert_allclose(out[5:15, 2:18], img[2:12, 4:20], atol=1e-5)


def test_fourier_and_cubic_shift_match_analytic_disk():
    shape, c0 = (64, 64), (31.5, 31.5)
    img = pj.disk_pattern(shape, c0, radius=9.0, lattice=None, edge=1.0)
    shift = np.array([3.3, -2.7])
    truth = pj.disk_pattern(shape, tuple(np.add(c0, shift)), radius=9.0, lattice=None, edge=1.0)
    errs = {m: np.abs(np.asarray(ops.translate(img, shift, m)) - truth).max() for m in ("linear", "cubic", "fourier")}
    assert errs["fourier"] < 3e-3, errs  # exact up to the disk's tiny out-of-band content
    assert errs["cubic"] < 0.02, errs
    assert errs["linear"] < 0.06, errs
    assert errs["cubic"] < errs["linear"] / 2, errs  # why "cubic" exists


def test_heatmap_center_recovers_subpixel_gaussian(rng):
    rows, cols = np.mgrid[0:64, 0:64].astype(np.float64)
    f = jax.jit(jax.vmap(ops.heatmap_center))
    truth = rng.uniform(12, 52, (32, 2))
    heat = np.stack([np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 2.0**2)) for r, c in truth]).astype(np.float32)
    heat = heat + np.float32(0.05)  # a flat background must not pull it towards the frame centre
    err = np.abs(np.asarray(f(jnp.asarray(heat))) - truth)
    assert err.max() < 0.01, err.max()


@pytest.mark.parametrize("method", ["com", "friedel"])
def test_classical_centers_on_disk_patterns(rng, method):
    fn = jax.jit(jax.vmap(ops.com_center if method == "com" else ops.friedel_center))
    truth = 31.5 + rng.uniform(-4, 4, (12, 2))
    frames = np.stack([pj.disk_pattern((64, 64), tuple(c), radius=7.0) for c in truth])
    err = np.abs(np.asarray(fn(jnp.asarray(frames))) - truth)
    assert err.max() < (0.01 if method == "com" else 0.05), err.max()  # com: masked to the disk


def test_friedel_center_ignores_asymmetric_intensity_inside_the_disk(rng):
    # A gradient across the disk moves the centre of mass but not the Friedel centre
    # of the Bragg pattern: the two estimators must disagree in the expected way.
    c = (30.2, 33.7)
    p = pj.disk_pattern((64, 64), c, radius=7.0, bragg_intensity=0.6)
    rows = np.arange(64)[:, None]
    tilt = (1.0 + 0.02 * (rows - c[0])) * (pj.disk_pattern((64, 64), c, 7.0, lattice=None) > 0.5)
    p = (p + 0.5 * tilt).astype(np.float32)
    com = np.asarray(ops.com_center(p))
    assert abs(com[0] - c[0]) > 0.05  # the plain centre of mass is pulled
    assert np.all(np.isfinite(np.asarray(ops.friedel_center(p))))


def test_ellipse_conversions_round_trip(rng):
    for _ in range(20):
        ratio, angle = rng.uniform(1.0, 1.5), rng.uniform(-10, 10)
        e = pj.Ellipse(ratio, angle)
        assert 0 <= e.angle < np.pi
        back = ops.ellipse_from_matrix(e.matrix())
        assert back.ratio == pytest.approx(ratio, abs=1e-9)
        if ratio > 1.001:
            assert back.angle == pytest.approx(e.angle, abs=1e-6)
        a, b, th = e.axes(10.0)
        assert a >= b and a * b == pytest.approx(100.0)
        assert pj.Ellipse.from_axes(a, b, th).ratio == pytest.approx(ratio)
        assert pj.Ellipse.from_axes(b, a, th + np.pi / 2).angle == pytest.approx(e.angle, abs=1e-9)
        assert pj.Ellipse.from_cos_sin(*e.cos_sin()).angle == pytest.approx(e.angle, abs=1e-9)
        np.testing.assert_allclose(np.asarray(ops.ellipse_matrix(ratio, angle)), e.matrix(), atol=1e-5)
        assert np.linalg.det(e.matrix()) == pytest.approx(1.0)
    # The a-axis direction: D stretches (sin t, cos t) in (row, col) by sqrt(ratio).
    e = pj.Ellipse(1.21, 0.3)
    u = np.array([np.sin(0.3), np.cos(0.3)])
    np.testing.assert_allclose(e.matrix() @ u, 1.1 * u)
    with pytest.raises(ValueError):
        pj.Ellipse(float("nan"), 0.0)
    with pytest.raises(ValueError):
        pj.Ellipse(-1.0, 0.0)
    assert pj.Ellipse(0.8, 0.1) == pj.Ellipse(1.25, 0.1 + np.pi / 2)
    assert ops.normalize_angle(-1e-18) == 0.0


def test_composed_warp_is_one_resampling():
    shape, true_c = (64, 64), (33.2, 29.6)
    ell = pj.Ellipse(1.15, 0.9)
    observed = pj.disk_pattern(shape, true_c, radius=8.0, ellipse=ell)
    ideal = pj.disk_pattern(shape, ops.frame_center(shape), radius=8.0)
    m = jnp.asarray(ell.matrix(), jnp.float32)
    composed = np.asarray(ops.recenter_and_correct(observed, jnp.asarray(true_c), m))
    two_step = np.asarray(ops.correct_ellipse(ops.recenter(observed, jnp.asarray(true_c)), m))
    inner = (slice(8, 56), slice(8, 56))
    # Same geometry: both agree within interpolation error ...
    assert np.abs(composed - two_step)[inner].max() < 0.1
    # ... but the composed map interpolates once, so it is closer to the truth.
    e1 = np.sqrt(np.mean((composed - ideal)[inner] ** 2))
    e2 = np.sqrt(np.mean((two_step - ideal)[inner] ** 2))
    assert e1 < 0.8 * e2, (e1, e2)
    # Recentring only (identity matrix) is the same as a translation.
    rec = np.asarray(ops.recenter_and_correct(observed, jnp.asarray(true_c)))
    np.testing.assert_allclose(rec, np.asarray(ops.recenter(observed, jnp.asarray(true_c))), atol=1e-5)


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_warp_gradients_match_finite_differences(rng, method):
    img = jnp.asarray(_smooth_image(rng))
    weights = jnp.asarray(rng.random(img.shape).astype(np.float32))

    def loss(center, ratio, angle, image):
        m = ops.ellipse_matrix(ratio, angle)
        return jnp.sum(weights * ops.recenter_and_correct(image, center, m, method))

    args = (jnp.array([22.3, 28.6]), jnp.float32(1.12), jnp.float32(0.7), img)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)

    def fd(i, delta):
        plus = list(args)
        minus = list(args)
        plus[i] = args[i] + delta
        minus[i] = args[i] - delta
        return (loss(*plus) - loss(*minus)) / 2.0

    eps = 1e-2
    for k in range(2):
        d = jnp.zeros(2).at[k].set(eps)
        np.testing.assert_allclose(float(grads[0][k]), float(fd(0, d)) / eps, rtol=3e-2, atol=1e-2)
    np.testing.assert_allclose(float(grads[1]), float(fd(1, jnp.float32(1e-3))) / 1e-3, rtol=3e-2)
    np.testing.assert_allclose(float(grads[2]), float(fd(2, jnp.float32(1e-3))) / 1e-3, rtol=3e-2)
    # The warp is linear in the image: the image gradient is exact.
    pix = (20, 25)
    d = jnp.zeros_like(img).at[pix].set(1.0)
    np.testing.assert_allclose(float(grads[3][pix]), float(fd(3, d)), rtol=1e-3, atol=1e-4)


def test_fourier_shift_gradient(rng):
    img = jnp.asarray(_smooth_image(rng))
    w = jnp.asarray(rng.random(img.shape).astype(np.float32))
    f = lambda s: jnp.sum(w * ops.translate(img, s, "fourier"))
    g = jax.grad(f)(jnp.array([0.3, -1.2]))
    # eps = 0.1 px: smaller steps drown in float32 cancellation of the sum.
    num = (f(jnp.array([0.4, -1.2])) - f(jnp.array([0.2, -1.2]))) / 0.2
    np.testing.assert_allclose(float(g[0]), float(num), rtol=5e-3)


def test_warps_vmap_and_jit(rng):
    frames = jnp.asarray(rng.random((5, 32, 32)).astype(np.float32))
    centers = jnp.asarray(15.5 + rng.uniform(-2, 2, (5, 2)).astype(np.float32))
    m = jnp.asarray(pj.Ellipse(1.1, 0.2).matrix(), jnp.float32)
    batched = jax.jit(jax.vmap(ops.recenter_and_correct, in_axes=(0, 0, None)))(frames, centers, m)
    single = ops.recenter_and_correct(frames[3], centers[3], m)
    np.testing.assert_allclose(np.asarray(batched[3]), np.asarray(single), atol=1e-5)


def test_fit_ellipse_edge_on_elliptical_disks(rng):
    fit = jax.jit(ops.fit_ellipse_edge)
    for _ in range(4):
        e = pj.Ellipse(rng.uniform(1.03, 1.25), rng.uniform(0, np.pi))
        c = 31.5 + rng.uniform(-0.3, 0.3, 2)
        img = pj.disk_pattern((64, 64), tuple(c), radius=14.0, ellipse=e, lattice=None)
        o = fit(img)
        est = pj.Ellipse.from_axes(float(o["a"]), float(o["b"]), float(o["angle"]))
        assert abs(est.ratio - e.ratio) < 0.001
        assert abs(np.angle(np.exp(2j * (est.angle - e.angle)))) / 2 < np.radians(0.1)
        np.testing.assert_allclose(np.asarray(o["center"]), c, atol=0.01)


def test_polar_transform_angle_convention():
    img = np.zeros((64, 64), np.float32)
    c = ops.frame_center(img.shape)
    phi = np.radians(60.0)  # from +x (col) towards +y (row)
    img[int(round(c[0] + 20 * np.sin(phi))), int(round(c[1] + 20 * np.cos(phi)))] = 1.0
    polar = np.asarray(ops.polar_transform(ndi.gaussian_filter(img, 1.5), n_angles=360))
    i, j = np.unravel_index(np.argmax(polar), polar.shape)
    assert abs(i - 60) <= 2 and abs(j - 20) <= 1


def test_gaussian_filter_matches_scipy_inside(rng):
    img = rng.random((40, 48)).astype(np.float32)
    ours = np.asarray(ops.gaussian_filter(img, 1.5))
    ref = ndi.gaussian_filter(img, 1.5, mode="constant", truncate=4.0)
    np.testing.assert_allclose(ours[8:-8, 8:-8], ref[8:-8, 8:-8], atol=1e-5)
    flat = np.asarray(ops.gaussian_filter(np.ones((30, 30), np.float32), 2.0))
    np.testing.assert_allclose(flat, 1.0, atol=1e-5)  # normalised at the borders


def test_resize_coordinates_round_trip():
    p = jnp.array([[10.25, 3.5], [0.0, 63.0]])
    there = ops.resize_coordinates(p, (64, 64), (32, 48))
    back = ops.resize_coordinates(there, (32, 48), (64, 64))
    np.testing.assert_allclose(np.asarray(back), np.asarray(p), atol=1e-5)
    # A Gaussian spot keeps its position through a resize, in mapped coordinates.
    rows, cols = np.mgrid[0:64, 0:64]
    spot = np.exp(-((rows - 20.3) ** 2 + (cols - 41.7) ** 2) / (2 * 3.0**2)).astype(np.float32)
    small = ops.resize(jnp.asarray(spot)[None], (32, 32))[0]
    c_small = ops.heatmap_center(small, threshold=0.05)
    c_big = ops.resize_coordinates(c_small, (32, 32), (64, 64))
    np.testing.assert_allclose(np.asarray(c_big), [20.3, 41.7], atol=0.05)
