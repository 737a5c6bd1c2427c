"""The fitted descan model (prenet_jax.ops.fit_descan) against known centre maps.

Most tests build the centre maps directly: true centre = c0 + descan surface (+ jitter),
measured = true + Gaussian estimator noise + a few failed estimates (+3 px). Errors are
the mean Euclidean distance to the true centres over all frames.
"""

import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.ops import Descan, descan_design, fit_descan

N = 32
# True planar descan, px, in the normalised scan coordinates y, x in [-1, 1] (2 px across
# the scan in each coordinate): row = 31.5 + 1.0 y + 0.4 x, col = 30.0 - 0.3 y + 1.0 x.
PLANE = np.array([[31.5, 1.0, 0.4], [30.0, -0.3, 1.0]])
# Quadratic terms (y^2, xy, x^2) added for the curved descan.
QUAD = np.array([[0.8, -0.5, 0.0], [0.3, 0.0, 0.6]])


def _maps(seed, noise=0.05, jitter=0.0, smooth=False, quad=False, frac=0.03, out_px=3.0, n=N):
    """(true, measured, failed) centre maps of an ``n x n`` scan."""
    rng = np.random.default_rng(seed)
    coef = np.concatenate([PLANE, QUAD], 1) if quad else PLANE
    true = (descan_design((n, n), 2 if quad else 1) @ coef.T).reshape(n, n, 2)
    if jitter and smooth:
        # Jitter correlated over ~10-20 scan steps (drift, coil ringing), not frame to frame.
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        ph = rng.uniform(0, 2 * np.pi, 2)
        true = true + jitter * np.stack([np.sin(2 * np.pi * j / 16 + 0.3 * i + ph[0]), np.cos(2 * np.pi * i / 20 + 0.2 * j + ph[1])], -1)
    elif jitter:
        true = true + jitter * rng.standard_normal(true.shape)
    meas = true + noise * rng.standard_normal(true.shape)
    failed = rng.random((n, n)) < frac
    meas[failed, 0] += out_px
    return true, meas, failed


def _err(centers, true):
    return float(np.linalg.norm(centers - true, axis=-1).mean())


def _errors(meas, true, **kw):
    return {m: _err(fit_descan(meas, m, **kw).centers, true) for m in ("frame", "plane", "quadratic", "auto")}


def test_plane_beats_per_frame_noise_and_ignores_failed_frames():
    errs, errs_clean, errs_ols = [], [], []
    for seed in range(4):
        true, meas, failed = _maps(seed)
        d = fit_descan(meas, "plane")
        assert isinstance(d, Descan) and d.degree == 1 and d.terms == ("1", "y", "x") and d.mode == "plane"
        assert not d.kept.any() and np.array_equal(d.centers, d.model)
        np.testing.assert_allclose(d.coefficients, PLANE, atol=0.01)
        np.testing.assert_allclose(d.residuals, meas - d.model)
        np.testing.assert_allclose(d.sigma, 0.05, rtol=0.15)  # the robust sigma ignores the failed 3 %
        errs.append(_err(d.centers, true))
        # The same map without failures: the robust fit lands on the same plane.
        clean = meas.copy()
        clean[failed, 0] -= 3.0
        errs_clean.append(_err(fit_descan(clean, "plane").centers, true))
        # Ordinary least squares for contrast: 3 % at +3 px pull it by ~0.09 px.
        a = descan_design((N, N), 1)
        errs_ols.append(_err((a @ np.linalg.lstsq(a, meas.reshape(-1, 2), rcond=None)[0]).reshape(N, N, 2), true))
    per_frame = _err(meas, true)
    # Expected ~1.25 * 0.05 * sqrt(3 / 1024) = 0.0034 px (40 simulated maps: median 0.0036,
    # max 0.0055), against 0.06 px per frame for the noise alone.
    assert np.mean(errs) <= 0.005, errs
    assert max(errs) <= 0.0065, errs
    assert np.mean(errs) < per_frame / 20
    assert abs(np.mean(errs) - np.mean(errs_clean)) < 0.0005, (errs, errs_clean)
    assert np.mean(errs_ols) > 10 * np.mean(errs), errs_ols


def test_frame_wins_over_plane_with_per_frame_jitter():
    true, meas, _ = _maps(0, noise=0.02, jitter=0.5, frac=0.0)
    e = _errors(meas, true)
    assert e["frame"] < 0.03 and e["plane"] > 0.5, e  # 0.025 (noise) vs 0.63 (jitter)


CASES = {
    "planar descan, 3 % failed": ({}, {}),
    "planar descan, clean": ({"frac": 0.0}, {}),
    # White jitter looks exactly like estimator noise in a centre map: auto needs to be
    # told the estimator's noise (see test_auto_white_jitter_needs_the_noise).
    "white jitter, clean": ({"noise": 0.02, "jitter": 0.5, "frac": 0.0}, {"center_noise": 0.02}),
    "white jitter, 3 % failed": ({"noise": 0.02, "jitter": 0.5}, {"center_noise": 0.02}),
    # Jitter about the size of the noise, or twice it: neither frame nor model wins by much,
    # and a keep-or-drop at 4.5 noise alone would drop most frames to the model (1.6x worse
    # than frame at twice the noise): auto keeps every frame once the jitter dominates.
    "white jitter = noise": ({"noise": 0.05, "jitter": 0.05, "frac": 0.0}, {"center_noise": 0.05}),
    "white jitter = 2 noise": ({"noise": 0.05, "jitter": 0.1, "frac": 0.0}, {"center_noise": 0.05}),
    # Smooth jitter: the noise is estimated from second differences of the residual map.
    "smooth jitter, clean": ({"noise": 0.02, "jitter": 0.5, "smooth": True, "frac": 0.0}, {}),
    "smooth jitter, 3 % failed": ({"noise": 0.02, "jitter": 0.5, "smooth": True}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_auto_within_10_percent_of_the_better_of_frame_and_plane(case):
    maps, kw = CASES[case]
    for seed in range(3):
        true, meas, _ = _maps(seed, **maps)
        e = _errors(meas, true, **kw)
        assert e["auto"] <= 1.1 * min(e["frame"], e["plane"]), (case, seed, e)


def test_auto_noise_estimate_and_white_jitter_needs_the_noise():
    # Smooth jitter: second differences see the 0.02 px estimator noise, not the 0.5 px jitter.
    _, meas, _ = _maps(1, noise=0.02, jitter=0.5, smooth=True, frac=0.0)
    d = fit_descan(meas)
    assert d.noise.shape == (2,) and np.all((d.noise > 0.015) & (d.noise < 0.03)), d.noise
    assert d.kept.mean() > 0.9
    # Pure descan: the noise estimate is the noise, and (almost) nothing is kept.
    _, meas, _ = _maps(1)
    d = fit_descan(meas)
    np.testing.assert_allclose(d.noise, 0.05, rtol=0.15)
    assert d.kept.sum() <= 2
    # The documented limit: white jitter counts as noise unless center_noise is given.
    true, meas, _ = _maps(1, noise=0.02, jitter=0.5, frac=0.0)
    blind, told = fit_descan(meas), fit_descan(meas, center_noise=0.02)
    assert np.all(blind.noise > 0.4) and blind.kept.mean() < 0.01
    assert told.kept.mean() > 0.95 and np.all(told.noise == 0.02)
    assert _err(told.centers, true) < 0.03 and _err(blind.centers, true) > 0.5


def test_quadratic_descan_is_recovered_by_quadratic():
    for seed in range(2):
        true, meas, _ = _maps(seed, quad=True)
        e = _errors(meas, true)
        d = fit_descan(meas, "quadratic")
        assert d.degree == 2 and d.terms == ("1", "y", "x", "y^2", "xy", "x^2")
        np.testing.assert_allclose(d.coefficients, np.concatenate([PLANE, QUAD], 1), atol=0.015)
        # Expected ~1.25 * 0.05 * sqrt(6 / 1024) = 0.0048 px; the plane misses the curvature.
        assert e["quadratic"] < 0.007 and e["plane"] > 0.2, e
        assert fit_descan(meas).degree == 2 and e["auto"] <= 1.1 * e["quadratic"], e
        # ... and BIC does not pick the quadratic for a plane.
        assert fit_descan(_maps(seed)[1]).degree == 1


@pytest.mark.parametrize("maps", [{}, {"noise": 0.02, "jitter": 0.5}, {"quad": True}])
def test_failed_frames_are_flagged_and_clean_ones_are_not(maps):
    for seed in range(2):
        _, meas, failed = _maps(seed, **maps)
        d = fit_descan(meas, "quadratic" if maps.get("quad") else "plane")
        recall = (d.outliers & failed).sum() / failed.sum()
        false = (d.outliers & ~failed).sum() / (~failed).sum()
        # +3 px is 60 sigma of the noise, ~6 sigma of 0.5 px jitter (which can hide some).
        assert recall >= (0.9 if maps.get("jitter") else 1.0), recall
        assert false <= 0.003, false


def test_valid_mask_and_non_finite_centres():
    true, meas, _ = _maps(2, frac=0.0)
    bad = meas.copy()
    valid = np.ones((N, N), bool)
    valid[3:6, 10:14] = False
    bad[3:6, 10:14] = 0.0  # e.g. empty frames placed at the frame centre: must not count
    bad[20, 20] = np.nan
    ref = fit_descan(meas, "plane")
    for mode in ("plane", "auto", "frame"):
        d = fit_descan(bad, mode, valid=valid)
        np.testing.assert_allclose(d.coefficients, ref.coefficients, atol=0.003)
        assert not d.valid[20, 20] and not d.valid[4, 11] and d.valid.sum() == N * N - 13
        assert not d.outliers[~d.valid].any()
        if mode == "frame":
            np.testing.assert_array_equal(d.centers, bad)
        else:  # invalid frames are given the model's centre
            np.testing.assert_array_equal(d.centers[~d.valid], d.model[~d.valid])
            assert _err(d.centers, true) < 0.01
    with pytest.raises(ValueError, match="no valid"):
        fit_descan(meas, valid=np.zeros((N, N), bool))


def test_small_scans_and_argument_checks():
    # A line scan has no y: the minimum-norm fit gives it a zero coefficient.
    line = np.stack([10 + np.linspace(0, 1, 16), np.full(16, 5.0)], -1)[None]
    d = fit_descan(line, "quadratic")
    np.testing.assert_allclose(d.model, line, atol=1e-9)
    np.testing.assert_allclose(d.coefficients[:, 1], 0.0, atol=1e-9)
    assert fit_descan(line).degree == 1  # too few frames to justify a quadratic
    one = np.array([[[3.0, 4.0]]])
    for mode in ("auto", "frame", "plane", "quadratic"):
        np.testing.assert_allclose(fit_descan(one, mode).centers, one)
    _, meas, _ = _maps(0)
    with pytest.raises(ValueError, match="mode"):
        fit_descan(meas, "linear")
    with pytest.raises(ValueError, match="Sy, Sx, 2"):
        fit_descan(meas.reshape(-1, 2))
    with pytest.raises(ValueError, match="valid"):
        fit_descan(meas, valid=np.ones((N, N - 1), bool))
    with pytest.raises(ValueError, match="center_noise"):
        fit_descan(meas, center_noise=0.0)
    # A per-frame noise map is accepted (e.g. from a dose-dependent error model).
    assert fit_descan(meas, center_noise=np.full((N, N, 1), 0.05)).kept.sum() <= 2


def test_end_to_end_planar_descan_through_the_classical_pipeline():
    """Frames simulated with a pure planar descan and Poisson noise; the classical pipeline's
    per-frame centres (thresholded centre of mass) are ~0.08 px off; the fitted plane
    averages 144 frames: expected ~sqrt(144 / 3) = 7x better (measured 6.2x)."""
    scan, shape = (12, 12), (32, 32)
    sim = pj.synthetic_cube(
        scan=scan, shape=shape, radius=5.0, descan=(0.12, -0.06, 0.05, 0.1), jitter=0.0, dose=2000, seed=4, lattice=None
    )
    truth = sim["centers"]
    pipe = pj.Pipeline(pj.PipelineConfig.classical(denoise_method="none", ellipse_method="none", batch_size=48))
    meas = pipe.find_centers(sim["cube"].reshape(-1, *shape)).reshape(*scan, 2)
    d = fit_descan(meas, "plane")
    e_frame, e_plane = _err(meas, truth), _err(d.centers, truth)
    assert e_frame > 0.04 and e_plane < e_frame / 4, (e_frame, e_plane)

    # Pipeline.preprocess(descan=...): the same fit, weighted by each frame's centre
    # uncertainty (Poisson thinning), and every frame warped about its chosen centre.
    res = pipe.preprocess(sim["cube"], descan="plane")
    np.testing.assert_allclose(res.descan.model + res.descan.residuals, meas, atol=1e-5)
    noise = pipe.center_noise(sim["cube"].reshape(-1, *shape)).reshape(*scan, 2)
    np.testing.assert_allclose(res.descan.noise, noise)
    np.testing.assert_allclose(res.centers, fit_descan(meas, "plane", center_noise=noise).centers, atol=1e-5)
    assert _err(res.centers, truth) < e_frame / 4  # equal doses: nearly the unweighted plane
    assert np.abs(res.centers - d.centers).max() < 0.01
    assert res.descan.mode == "plane" and res.centers.shape == scan + (2,) and res.data.shape == scan + shape
    # descan="frame" is the one-pass result, through the two-pass path.
    plain, framed = pipe.preprocess(sim["cube"]), pipe.preprocess(sim["cube"], descan="frame")
    assert plain.descan is None and framed.descan.mode == "frame"
    np.testing.assert_allclose(framed.centers, plain.centers, atol=1e-6)
    np.testing.assert_allclose(framed.data, plain.data, atol=1e-4)
    np.testing.assert_array_equal(framed.flags, plain.flags)
    # Warping about the fitted centres: the plane's data differ from the per-frame warp by
    # the centre corrections, which are the per-frame errors.
    assert not np.allclose(res.data, plain.data, atol=1e-3)
    with pytest.raises(ValueError, match="descan"):
        pipe.preprocess(sim["cube"], descan="linear")


def test_center_noise_by_poisson_thinning_matches_the_measured_error():
    """Pipeline.center_noise splits sampled frames into two Poisson halves; the spread of
    their centres predicts the error of the full frames' centres against the truth."""
    scan, shape = (12, 12), (32, 32)
    # a fixed width: the risk-chosen one differs between a frame and its thinned halves (half
    # the dose, a wider filter), which puts the thinning estimate 31 % above the measured error
    pipe = pj.Pipeline(pj.PipelineConfig.classical(ellipse_method="none", batch_size=48, gaussian_sigma=1.0))
    for dose in (500, 5000):
        sim = pj.synthetic_cube(scan=scan, shape=shape, radius=5.0, descan=(0, 0, 0, 0), jitter=0.0, dose=dose, seed=2, lattice=None)
        frames = sim["cube"].reshape(-1, *shape)
        err = pipe.find_centers(frames) - sim["centers"].reshape(-1, 2)
        noise = pipe.center_noise(frames, n=144)
        assert noise.shape == (144, 2)
        # 144 frames: the std of the error itself is known to ~6 %, the thinning estimate to ~10 %
        np.testing.assert_allclose(np.median(noise, 0), err.std(0), rtol=0.3)
    # frames told they hold ten times the counts of the others get sqrt(10) less noise
    counts = np.where(np.arange(144) % 2, 50000.0, 5000.0)
    noise = pipe.center_noise(frames, counts=counts, n=144)
    np.testing.assert_allclose(noise[0::2] / noise[1::2], np.sqrt(10), rtol=1e-6)
    assert pipe.center_noise(frames * 0.37) is None  # not counts: thinning cannot tell


def test_each_frames_uncertainty_weights_the_fit_and_judges_its_outliers():
    # Half the frames (a random half) have a hundredth of the counts: ten times the
    # centre noise. Given each frame's noise, the plane is a weighted fit, far closer to
    # the true descan than the fit that treats every frame alike.
    rng = np.random.default_rng(3)
    true, _, _ = _maps(0, frac=0.0)
    noise = np.where(rng.random((N, N)) < 0.5, 0.5, 0.05)[..., None] * np.ones(2)
    meas = true + noise * rng.standard_normal(true.shape)
    weighted = fit_descan(meas, "plane", center_noise=noise)
    alike = fit_descan(meas, "plane")
    e_w, e_a = _err(weighted.model, true), _err(alike.model, true)
    assert e_w < 0.5 * e_a and e_w < 0.01, (e_w, e_a)
    # A constant noise is no weighting: the same fit as without it.
    np.testing.assert_allclose(fit_descan(meas, "plane", center_noise=0.2).model, alike.model, atol=1e-9)
    # 1.5 px off the model is 3 of a noisy frame's sigmas (kept) but 30 of a quiet one's.
    noisy_ij = tuple(np.argwhere(noise[..., 0] == 0.5)[0])
    quiet_ij = tuple(np.argwhere(noise[..., 0] == 0.05)[0])
    off = meas.copy()
    off[noisy_ij] = true[noisy_ij] + (1.5, 0.0)
    off[quiet_ij] = true[quiet_ij] + (1.5, 0.0)
    fit = fit_descan(off, "auto", center_noise=noise)
    assert not fit.outliers[noisy_ij] and fit.outliers[quiet_ij]
    assert fit.outliers.sum() == 1
    assert np.allclose(fit.centers[quiet_ij], fit.model[quiet_ij])  # it takes the model's centre
    # Judged alike, the noisy frame's 1.5 px is a failure too (3 sigmas of its own noise).
    assert fit_descan(off, "auto").outliers[noisy_ij]
