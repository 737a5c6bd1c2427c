"""What real detectors add (prenet_jax.corruption._detector): each effect against what we drew."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prenet_jax.corruption import AugmentConfig, augment, direct_disk_radius
from prenet_jax.ops import direct_beam_found

S = 128
Z = (S / 2, S / 2)
R = 12.0


def _patterns(batch=8):
    """A direct disk of radius R at the zero angle and two weaker Bragg disks."""
    r, c = np.mgrid[:S, :S].astype(np.float64)

    def disk(r0, c0, rad, amp):
        return amp / (1.0 + np.exp((np.hypot(r - r0, c - c0) - rad) / 0.5))

    img = disk(*Z, R, 1.0) + disk(Z[0] + 35, Z[1] + 10, 6, 0.3) + disk(Z[0] - 30, Z[1] - 20, 6, 0.3)
    img /= img.sum()
    return jnp.asarray(np.broadcast_to(img, (batch, S, S)).astype(np.float32)), jnp.asarray(Z, jnp.float32)


BASE = dict(max_shift=4.0, ratio_range=(1.0, 1.05), dose_range=(1e5, 1e5), read_noise_range=(0.0, 0.0), scale_range=(1.0, 1.0))


def _run(seed=0, **effects):
    clean, zero = _patterns()
    return augment(jax.random.key(seed), clean, zero, AugmentConfig(**BASE, **effects), return_info=True)


def test_effects_keep_the_geometry_and_noise_draws():
    """Switching an effect on draws the same shift, ellipse and rotation: only the effect changes."""
    a0, p0 = _run()
    a1, p1 = _run(gap_fraction=1.0, saturation_fraction=1.0)
    for k in ("shift", "ratio", "angle", "rotation", "dose"):
        np.testing.assert_array_equal(np.asarray(p0[k]), np.asarray(p1[k]))
    np.testing.assert_array_equal(np.asarray(a0.center), np.asarray(a1.center))


def test_direct_disk_radius():
    clean, zero = _patterns(2)
    np.testing.assert_allclose(np.asarray(direct_disk_radius(clean, zero)), R, atol=1.0)


def test_saturation_is_a_plateau_at_the_drawn_level():
    a0, _ = _run()
    a, p = _run(saturation_fraction=1.0, saturation_level=(0.2, 0.4))
    level = np.asarray(p["saturation_level"]) * np.asarray(a0.target).max(axis=(1, 2))
    noisy = np.asarray(a.noisy)
    np.testing.assert_allclose(noisy.max(axis=(1, 2)), level, rtol=1e-5)
    assert np.all(np.asarray(a.target).max(axis=(1, 2)) <= level * (1 + 1e-5))
    # The whole disk sits on the level: hundreds of pixels, a flat top.
    assert np.all((noisy >= level[:, None, None] * (1 - 1e-5)).sum(axis=(1, 2)) > 200)


def test_edge_cuts_the_disk_at_the_drawn_distance():
    a, p = _run(edge_fraction=1.0, edge_distance=(-4.0, 6.0))
    c = np.asarray(a.center)
    d = np.stack([c[:, 0], S - 1 - c[:, 0], c[:, 1], S - 1 - c[:, 1]], -1)
    side = np.asarray(p["edge_side"])
    np.testing.assert_allclose(d[np.arange(len(side)), side], np.asarray(p["edge_distance"]), atol=1e-4)
    # Part of the disk is off the frame: the recorded total falls short of the dose.
    assert np.all(np.asarray(a.target).sum(axis=(1, 2)) < 0.97e5)


def test_bragg_dims_the_direct_disk_only():
    a0, _ = _run()
    a, p = _run(bragg_fraction=1.0, bragg_attenuation=(0.1, 0.3))
    t0, t = np.asarray(a0.target), np.asarray(a.target)
    c = np.round(np.asarray(a.center)).astype(int)
    centre = np.array([t[i, c[i, 0], c[i, 1]] / t0[i, c[i, 0], c[i, 1]] for i in range(len(c))])
    np.testing.assert_allclose(centre, np.asarray(p["bragg_attenuation"]), rtol=0.02)
    far = np.hypot(*np.mgrid[:S, :S][:, None] - c.T[:, :, None, None]) > R + 4  # Bragg disks untouched
    np.testing.assert_allclose(t[far.transpose(0, 1, 2)], t0[far], rtol=1e-4, atol=1e-3)


def test_kikuchi_background_adds_the_drawn_share():
    a0, _ = _run()
    a, p = _run(kikuchi_fraction=1.0, kikuchi_strength=(0.2, 0.8))
    ratio = np.asarray(a.target).sum(axis=(1, 2)) / np.asarray(a0.target).sum(axis=(1, 2))
    np.testing.assert_allclose(ratio, 1.0 + np.asarray(p["kikuchi_strength"]), rtol=1e-3)
    assert np.all(np.asarray(jax.vmap(direct_beam_found)(a.noisy)))  # the disk is still found


def test_gaps_record_nothing_but_stay_in_the_target():
    a, p = _run(gap_fraction=1.0, gap_width=(3.0, 3.0))
    noisy, target = np.asarray(a.noisy), np.asarray(a.target)
    for i in range(noisy.shape[0]):
        row = int(round((S - 1) / 2 + float(p["gap_offset"][i])))
        assert np.all(noisy[i, row] == 0) and target[i, row].sum() > 0


def test_no_beam_frames_have_no_centre_and_are_detected():
    a, p = _run(no_beam_fraction=0.5, seed=3)
    beam = np.asarray(p["beam"])
    assert 0 < beam.sum() < beam.size  # both kinds in the batch
    c = np.asarray(a.center)
    assert np.all(np.isnan(c[~beam])) and np.all(np.isfinite(c[beam]))
    np.testing.assert_array_equal(np.asarray(jax.vmap(direct_beam_found)(a.noisy)), beam)


def test_effect_probability_checked():
    with pytest.raises(ValueError, match="saturation_fraction"):
        AugmentConfig(saturation_fraction=1.5)
    with pytest.raises(ValueError, match="edge_distance"):
        AugmentConfig(edge_distance=(5.0, 1.0))
