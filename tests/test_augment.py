"""On-device augmentation: labels consistent with the pipeline's warp, noise at the requested dose."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prenet_jax.conventions import ellipse_matrix
from prenet_jax.corruption import AugmentConfig, augment, distort, poisson
from prenet_jax.ops import frame_center, recenter_and_correct

S = 128  # small frames keep the tests fast; the zero angle sits at (S/2, S/2) as in abTEM
Z = S / 2
SPOTS = ((0.0, 0.0, 1.0, 4.0), (-20.0, 9.0, 0.5, 2.5), (14.0, 22.0, 0.35, 2.5), (30.0, -25.0, 0.2, 3.0))


def _analytic(rows, cols):
    """A smooth, asymmetric pattern around the origin: sum of Gaussian spots (dr, dc, amp, sigma)."""
    out = 0.0
    for dr, dc, amp, sig in SPOTS:
        out = out + amp * np.exp(-((rows - dr) ** 2 + (cols - dc) ** 2) / (2 * sig**2))
    return out


def _clean(batch=4):
    r, c = np.mgrid[:S, :S].astype(np.float64)
    img = _analytic(r - Z, c - Z)
    return jnp.asarray(np.broadcast_to(img, (batch, S, S)).astype(np.float32))


def _disk(radius=8.0, width=0.7):
    r, c = np.mgrid[:S, :S].astype(np.float64)
    d = np.hypot(r - Z, c - Z)
    return (1.0 / (1.0 + np.exp((d - radius) / width))).astype(np.float32)


GEOMETRY_ONLY = AugmentConfig(dose_range=None, read_noise_range=(0.0, 0.0), scale_range=(1.0, 1.0))


def _rot_t(phi):
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s], [s, c]])  # R^T in (row, col) order


def test_distortion_matches_the_label_semantics():
    """distorted(p) = clean(z + R^T D^-1 (p - center)): checked against the analytic pattern."""
    out, info = augment(jax.random.key(1), _clean(), jnp.array([Z, Z]), GEOMETRY_ONLY, return_info=True)
    p = np.stack(np.mgrid[:S, :S].astype(np.float64), -1)  # (S, S, 2)
    for b in range(4):
        center = np.asarray(out.center[b], np.float64)
        ratio, angle = float(out.ellipse[0][b]), float(out.ellipse[1][b])
        m = _rot_t(float(info["rotation"][b])) @ np.linalg.inv(np.asarray(ellipse_matrix(ratio, angle), np.float64))
        q = (p - center) @ m.T  # clean offsets from the zero angle
        want = _analytic(q[..., 0], q[..., 1])
        np.testing.assert_allclose(np.asarray(out.target[b]), want, atol=2e-3)
        np.testing.assert_allclose(center, Z + np.asarray(info["shift"][b]), atol=1e-5)


def test_inverting_the_warp_with_the_label_recovers_the_clean_pattern():
    """The pipeline's recenter_and_correct(noisy-free input, center, D) gives back the clean
    pattern with its zero angle on the geometric centre ((S-1)/2, (S-1)/2), rotated by the
    in-plane rotation (off here, so the comparison is with the clean pattern itself)."""
    cfg = AugmentConfig(dose_range=None, read_noise_range=(0.0, 0.0), scale_range=(1.0, 1.0), rotate=False)
    clean = _clean()
    out, _ = augment(jax.random.key(7), clean, jnp.array([Z, Z]), cfg, return_info=True)
    c0 = np.asarray(frame_center((S, S)))
    r, c = np.mgrid[:S, :S].astype(np.float64)
    # The clean pattern moved by c0 - z = (-0.5, -0.5): its zero angle on the geometric centre.
    want = _analytic(r - c0[0], c - c0[1])
    for b in range(clean.shape[0]):
        d = ellipse_matrix(out.ellipse[0][b], out.ellipse[1][b])
        back = recenter_and_correct(out.target[b], out.center[b], d, method="cubic")
        inner = np.hypot(r - c0[0], c - c0[1]) < S / 2 - 20  # away from what left the frame
        err = np.abs(np.asarray(back) - want)[inner].max()
        assert err < 5e-3, f"frame {b}: max error {err:.2e} of a unit peak"


def test_rotation_is_about_the_zero_angle():
    """With rotation on, the recovered pattern is the clean one rotated by the drawn angle about the centre."""
    clean = _clean(4)
    out, info = augment(jax.random.key(3), clean, jnp.array([Z, Z]), GEOMETRY_ONLY, return_info=True)
    c0 = np.asarray(frame_center((S, S)))
    p = np.stack(np.mgrid[:S, :S].astype(np.float64), -1)
    for b in range(2):
        d = ellipse_matrix(out.ellipse[0][b], out.ellipse[1][b])
        back = np.asarray(recenter_and_correct(out.target[b], out.center[b], d, method="cubic"))
        q = (p - c0) @ _rot_t(float(info["rotation"][b])).T
        want = _analytic(q[..., 0], q[..., 1])
        inner = np.hypot(p[..., 0] - c0[0], p[..., 1] - c0[1]) < S / 2 - 20
        assert np.abs(back - want)[inner].max() < 5e-3


def test_centre_of_a_symmetric_disk_is_the_label():
    disk = jnp.asarray(np.broadcast_to(_disk(), (4, S, S)))
    out, _ = augment(jax.random.key(11), disk, jnp.array([Z, Z]), GEOMETRY_ONLY, return_info=True)
    t = np.asarray(out.target, np.float64)
    r, c = np.mgrid[:S, :S]
    com = np.stack([(t * r).sum((1, 2)) / t.sum((1, 2)), (t * c).sum((1, 2)) / t.sum((1, 2))], -1)
    np.testing.assert_allclose(com, np.asarray(out.center), atol=0.01)
    # and the labels span the requested ranges
    assert np.all(np.abs(np.asarray(out.center) - Z) <= 16.0)
    ratio, angle = np.asarray(out.ellipse[0]), np.asarray(out.ellipse[1])
    assert np.all((ratio >= 1.0) & (ratio <= 1.2)) and np.all((angle >= 0) & (angle < np.pi))


def test_area_preserving_and_deterministic():
    disk = jnp.asarray(np.broadcast_to(_disk(), (16, S, S)))
    a, info = augment(jax.random.key(5), disk, jnp.array([Z, Z]), return_info=True)
    b, _ = augment(jax.random.key(5), disk, jnp.array([Z, Z]), return_info=True)
    c, _ = augment(jax.random.key(6), disk, jnp.array([Z, Z]), return_info=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.noisy), np.asarray(c.noisy))
    # det D = 1 and rotations keep the integral: target sum = scale * dose * clean sum
    want = np.asarray(info["scale"] * info["dose"]) * float(disk[0].sum())
    np.testing.assert_allclose(np.asarray(a.target).sum((1, 2)), want, rtol=2e-3)


def test_noise_statistics_match_the_dose():
    """Fixed dose, gain 2, read noise 0.7 e; left half 0.5 e/pixel (exact Poisson branch),
    right half 40 e/pixel (expansion branch): mean 2 lam, variance 4 (lam + 0.49)."""
    lam = np.where(np.arange(S) < S // 2, 0.5, 40.0)[None, None, :] * np.ones((8, S, 1))
    dose, gain, read = float(lam[0].sum()), 2.0, 0.7
    cfg = AugmentConfig(
        max_shift=0.0,
        ratio_range=(1.0, 1.0),
        rotate=False,
        scale_range=(gain, gain),
        dose_range=(dose, dose),
        read_noise_range=(read, read),
    )
    out, _ = augment(jax.random.key(4), jnp.asarray(lam / dose, jnp.float32), jnp.array([Z, Z]), cfg, return_info=True)
    np.testing.assert_allclose(np.asarray(out.target), gain * lam, rtol=1e-4)
    for half, level in ((slice(0, S // 2), 0.5), (slice(S // 2, S), 40.0)):
        x = np.asarray(out.noisy, np.float64)[:, :, half]
        n = x.size
        mean_want, var_want = gain * level, gain**2 * (level + read**2)
        assert abs(x.mean() - mean_want) < 5 * math.sqrt(var_want / n)
        assert abs(x.var() / var_want - 1) < 5 * math.sqrt(2 / n) + 0.005


def test_dose_is_log_uniform_in_range_and_total_counts_follow_it():
    disk = _disk()
    disk = disk / disk.sum()  # all electrons inside the frame
    out, info = augment(jax.random.key(2), jnp.asarray(np.broadcast_to(disk, (16, S, S))), jnp.array([Z, Z]), return_info=True)
    dose, scale, read = (np.asarray(info[k], np.float64) for k in ("dose", "scale", "read_noise"))
    assert dose.min() >= 1e2 and dose.max() <= 1e6
    assert 2.0 < np.median(np.log10(dose)) < 6.0
    electrons = np.asarray(out.noisy, np.float64).sum((1, 2)) / scale  # shot + read noise
    sigma = np.sqrt(dose + S * S * read**2)
    assert np.all(np.abs(electrons - dose * disk.sum()) < 6 * sigma + 1)


def test_fast_poisson_sampler():
    lams = np.array([0.05, 3.0, 9.5, 12.0, 400.0], np.float32)
    x = np.asarray(poisson(jax.random.key(0), jnp.asarray(np.repeat(lams[:, None], 200_000, 1))), np.float64)
    assert np.all(x == np.round(x)) and x.min() >= 0
    for lam, row in zip(lams, x):
        assert abs(row.mean() / lam - 1) < 5 / math.sqrt(lam * row.size)
        assert abs(row.var() / lam - 1) < 0.01 + 5 * math.sqrt(2 / row.size)


def test_hot_and_dead_pixels():
    cfg = AugmentConfig(
        max_shift=0.0,
        ratio_range=(1.0, 1.0),
        rotate=False,
        hot_pixel_fraction=0.01,
        dead_pixel_fraction=0.02,
        read_noise_range=(0, 0),
        dose_range=(1e6, 1e6),
    )
    flat = jnp.full((4, S, S), 1.0 / (S * S), jnp.float32)
    out, _ = augment(jax.random.key(9), flat, jnp.array([Z, Z]), cfg, return_info=True)
    x, t = np.asarray(out.noisy), np.asarray(out.target)
    assert abs((x == 0).mean() - 0.02) < 0.004
    assert abs((x > 1.5 * t.max()).mean() - 0.01) < 0.003
    assert np.all(np.isfinite(t)) and t.min() >= 0


def test_distort_direct_and_config_errors():
    disk = jnp.asarray(_disk()[None])
    out, center = distort(
        disk, jnp.array([[Z, Z]]), jnp.array([[2.5, -3.25]]), jnp.array([1.0]), jnp.array([0.0]), jnp.array([0.0]), "cubic"
    )
    np.testing.assert_allclose(np.asarray(center), [[Z + 2.5, Z - 3.25]])
    with pytest.raises(ValueError, match="ratio_range"):
        AugmentConfig(ratio_range=(0.9, 1.1))
    with pytest.raises(ValueError, match="dose_range"):
        AugmentConfig(dose_range=(0.0, 10.0))
    with pytest.raises(ValueError, match="method"):
        AugmentConfig(method="fourier")
