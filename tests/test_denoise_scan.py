"""The scan denoiser (``denoise_method="scan"``): each frame with its aligned scan
neighbours, window and blur chosen per frame by its Poisson risk. Checked against scans
whose noise-free frames and descan shifts are known."""

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.data import SimulationConfig, draw_task
from prenet_jax.ops import shift_between, translate
from prenet_jax.pipeline import ScanDenoised, noise_check, scan_centers, scan_gaussian
from prenet_jax.preprocess import preprocess_file

SCAN, SHAPE, DOSE = (8, 8), (48, 48), 1500.0


def _scan(seed=0, vary=0.0, descan=(0.3, -0.2), jitter=0.3):
    """Poisson counts of a disk pattern moved by a descan plane plus jitter: ``(noisy,
    clean, centres)``; ``vary`` modulates the Bragg intensities along the scan."""
    rng = np.random.default_rng(seed)
    clean = np.zeros(SCAN + SHAPE)
    centers = np.zeros(SCAN + (2,))
    for i in range(SCAN[0]):
        for j in range(SCAN[1]):
            c = (23.5 + descan[0] * i + jitter * rng.standard_normal(), 23.5 + descan[1] * j + jitter * rng.standard_normal())
            centers[i, j] = c
            bragg = 0.3 * (1 + vary * np.sin(1.7 * i + 2.3 * j))
            p = pj.disk_pattern(SHAPE, c, 7.0, None, lattice=((0.0, 2.6), (2.25, 1.3)), orders=2, edge=0.6, bragg_intensity=bragg)
            clean[i, j] = p / p.sum() * DOSE
    return rng.poisson(clean).astype(np.uint16), clean, centers


@pytest.fixture(scope="module")
def drifting():
    return _scan()


def _mse(a, b):
    return float(np.mean((np.asarray(a, np.float64) - b) ** 2))


def test_the_alignment_follows_the_applied_descan_and_jitter(drifting):
    noisy, _, truth = drifting
    found = scan_centers(noisy)
    err = (found - found.mean((0, 1))) - (truth - truth.mean((0, 1)))
    assert np.all(np.isfinite(found))
    assert np.mean(np.linalg.norm(err, axis=-1)) < 0.1  # jitter 0.3 px, descan up to 2.1 px across


def test_shift_between_recovers_a_subpixel_shift():
    t = jnp.asarray(pj.disk_pattern((64, 64), (31.5, 31.5), 10.0, None, None))
    got = np.asarray(shift_between(translate(t, jnp.asarray([2.3, -1.7]), "fourier"), t))
    np.testing.assert_allclose(got, [2.3, -1.7], atol=0.01)


def test_the_scan_beats_the_frame_by_frame_gaussian_by_5_db(drifting):
    noisy, clean, _ = drifting
    res = scan_gaussian(noisy)
    frame = pj.Pipeline(pj.PipelineConfig(denoise_method="gaussian", center_method="none", ellipse_method="none"))
    per_frame = frame.denoise(noisy.reshape(-1, *SHAPE)).reshape(noisy.shape)
    gain = 10 * np.log10(_mse(per_frame, clean) / _mse(res.frames, clean))
    assert gain > 5.0, gain
    assert res.frames.dtype == np.float32 and res.frames.shape == noisy.shape and res.frames.min() >= 0
    # the risk of the chosen estimate, against its true MSE (the alignment follows each
    # frame's own noise, which the estimate leaves out: it errs low, here by under 35 %)
    assert 0.65 < res.risk.mean() / _mse(res.frames, clean) < 1.15
    assert np.all(res.width != 0)  # every frame took neighbours


def test_without_a_choice_the_risk_is_the_true_mse():
    """Identical frames, no descan, no alignment: the 5x5 box wins everywhere, a fixed
    linear filter whose PURE is exact."""
    noisy, clean, _ = _scan(seed=3, descan=(0.0, 0.0), jitter=0.0)
    res = scan_gaussian(noisy, align=False, widths=(0.0, -2.0), sigmas=(0.0,), solve=False)
    assert np.all(res.width == -2.0)
    assert abs(res.risk.mean() / _mse(res.frames, clean) - 1) < 0.05
    np.testing.assert_allclose(res.noisy_risk.mean(), _mse(noisy, clean), rtol=0.03)


def test_unrelated_neighbours_are_left_out():
    """Each frame a different pattern (disk radius and position): averaging would blur,
    so the frames keep to themselves and the result is the frame-by-frame Gaussian's."""
    rng = np.random.default_rng(5)
    clean = np.zeros(SCAN + SHAPE)
    for i in range(SCAN[0]):
        for j in range(SCAN[1]):
            p = pj.disk_pattern(SHAPE, (rng.uniform(16, 32), rng.uniform(16, 32)), rng.uniform(4, 12), None, None)
            clean[i, j] = p / p.sum() * 2e4
    noisy = rng.poisson(clean).astype(np.uint16)
    res = scan_gaussian(noisy)
    frame = pj.Pipeline(pj.PipelineConfig(denoise_method="gaussian", center_method="none", ellipse_method="none"))
    per_frame = frame.denoise(noisy.reshape(-1, *SHAPE)).reshape(noisy.shape)
    assert _mse(res.frames, clean) <= 1.02 * _mse(per_frame, clean)


def test_frames_that_are_not_counts_are_refused_by_name(drifting):
    noisy = drifting[0].astype(np.int32) * 3  # every electron counted 3 times: variance 3x the mean
    assert "not counts" in noise_check(noisy.reshape(-1, *SHAPE))
    with pytest.raises(ValueError, match="counted electrons"):
        scan_gaussian(noisy)


def test_the_pipeline_runs_it_and_says_so(drifting):
    noisy, clean, _ = drifting
    pipe = pj.Pipeline(pj.PipelineConfig(denoise_method="scan", center_method="com", ellipse_method="none"))
    with pytest.raises(ValueError, match="denoise_scan"):
        pipe.denoise(noisy.reshape(-1, *SHAPE))
    out = pipe.preprocess(noisy)
    assert isinstance(out.scan_denoised, ScanDenoised)
    np.testing.assert_array_equal(out.scan_denoised.frames, pipe.denoise_scan(noisy))
    assert out.data.shape == noisy.shape


def test_the_file_path_records_each_frames_choice(drifting, tmp_path):
    noisy = drifting[0]
    np.save(tmp_path / "scan.npy", noisy)
    pipe = pj.Pipeline.classical(denoise_method="scan", ellipse_method="none")
    lines = []
    preprocess_file(tmp_path / "scan.npy", tmp_path / "out.h5", pipeline=pipe, diagnostics=False, log=lines.append)
    with h5py.File(tmp_path / "out.h5", "r") as f:
        rec = f["datacube_root/metadatabundle/preprocessing"]
        assert rec["denoise"][()].decode().startswith("scan:")
        assert rec["denoise_scan_window"].shape == SCAN and np.all(rec["denoise_scan_window"][()] != 0)
        assert rec["denoise_estimated_gain_db"][()] > 5
    # not counts: a warning naming why, and the frame-by-frame Gaussian instead
    np.save(tmp_path / "triple.npy", noisy.astype(np.int32) * 3)
    lines.clear()
    preprocess_file(tmp_path / "triple.npy", tmp_path / "out3.h5", pipeline=pipe, diagnostics=False, log=lines.append)
    assert any("--denoise-method scan needs counted electrons" in line for line in lines)
    with h5py.File(tmp_path / "out3.h5", "r") as f:
        assert f["datacube_root/metadatabundle/preprocessing/denoise"][()].decode().startswith("gaussian")


def test_a_raster_simulation_puts_the_probe_on_a_grid():
    cfg = SimulationConfig(structure_ids=("vacuum",), positions_per_task=9, scan_grid=3, position_jitter_a=1.0, gpts=384)
    pos = np.asarray(draw_task(cfg, ["vacuum"], 0).positions_a)
    centre = pos.mean(0)
    np.testing.assert_allclose(pos - centre, np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 2), atol=1e-9)
    with pytest.raises(ValueError, match="positions_per_task"):
        SimulationConfig(positions_per_task=8, scan_grid=3)
