"""``denoise_risk``: a denoiser's mean squared error from the noisy frames alone, checked
against the true MSE of frames whose noise-free expectation is known; and the
Gaussian whose width each frame chooses by that risk."""

import jax
import numpy as np
import pytest
import scipy.ndimage as ndi

import prenet_jax as pj
from prenet_jax.internal import grid_filters as _grid_filters
from prenet_jax.pipeline import (
    SIGMA_GRID,
    RiskEstimate,
    denoise_risk,
    dose_adaptive_gaussian,
    estimate_noise,
    frame_sigma,
    gaussian_centre_weight,
    grid_risks,
)

SHAPE = (64, 64)


def _pattern():
    p = pj.disk_pattern(SHAPE, (31.6, 32.3), 9.0, None, lattice=((0.0, 2.6), (2.25, 1.3)), orders=2, edge=0.6, bragg_intensity=0.3)
    return np.asarray(p, np.float64) / p.sum()


def _frames(dose, n, seed):
    clean = np.broadcast_to(_pattern() * dose, (n, *SHAPE))
    return clean, np.random.default_rng(seed).poisson(clean).astype(np.float32)


def _true_mse(out, clean):
    return float(np.mean((np.asarray(out, np.float64) - clean) ** 2))


def _gaussian(sigma):
    fn = jax.jit(lambda a: pj.ops.gaussian_filter(a, sigma))
    return lambda a: np.asarray(fn(a))


@pytest.fixture(scope="module")
def poisson_frames():
    return _frames(3e4, 48, seed=1)


@pytest.mark.parametrize("sigma", [0.7, 1.5, 3.0])
def test_the_exact_pure_of_a_gaussian_is_its_true_mse(poisson_frames, sigma):
    clean, noisy = poisson_frames
    fn = _gaussian(sigma)
    true = _true_mse(fn(noisy), clean)
    est = denoise_risk(noisy, fn, centre_weight=gaussian_centre_weight(SHAPE, sigma))
    assert isinstance(est, RiskEstimate) and est.valid and est.method == "linear" and est.probes == 0
    assert est.gain == 1.0 and est.read_noise == 0.0  # integers with variance = mean: counted electrons
    assert est.mse == pytest.approx(true, rel=0.03)
    # the estimate of the noisy input itself: its mean variance, the mean count
    assert est.noisy_mse == pytest.approx(float(noisy.mean()), rel=1e-6)
    assert est.psnr_gain == pytest.approx(10 * np.log10(_true_mse(noisy, clean) / true), abs=0.2)
    # the in-step grid computes the same estimate
    k = SIGMA_GRID.index(min(SIGMA_GRID, key=lambda s: abs(s - sigma))) if sigma in SIGMA_GRID else None
    if k is not None:
        np.testing.assert_allclose(np.asarray(grid_risks(noisy))[:, k], est.per_frame, rtol=1e-3)


@pytest.mark.parametrize("name", ["gaussian", "median", "rule"])
def test_the_monte_carlo_estimate_of_any_denoiser_is_its_true_mse(poisson_frames, name):
    clean, noisy = poisson_frames
    if name == "gaussian":
        fn = _gaussian(1.5)
    elif name == "median":
        fn = lambda a: ndi.median_filter(a, size=(1, 3, 3), mode="nearest")  # noqa: E731
    else:
        from prenet_jax.pipeline import rule_gaussian

        rule = jax.jit(rule_gaussian)
        fn = lambda a: np.asarray(rule(a))  # noqa: E731  # nonlinear: the width depends on the frame
    true = _true_mse(fn(noisy), clean)
    est = denoise_risk(noisy, fn, seed=3)
    assert est.valid and est.method == "monte-carlo" and est.probes == 16
    assert est.mse == pytest.approx(true, rel=0.06)
    assert est.stderr > 0 and est.per_frame.shape == (48,)


def test_scan_shaped_frames_give_a_scan_shaped_estimate(poisson_frames):
    clean, noisy = poisson_frames
    est = denoise_risk(noisy.reshape(6, 8, *SHAPE), lambda a: a, centre_weight=1.0)
    # the identity's risk is the noise variance, estimated by the counts themselves
    assert est.per_frame.shape == (6, 8)
    np.testing.assert_allclose(est.per_frame, noisy.reshape(6, 8, -1).mean(-1), rtol=1e-5)
    assert est.mse == pytest.approx(_true_mse(noisy, clean), rel=0.02)


def test_the_chosen_sigma_is_none_at_high_dose_and_grows_as_the_dose_falls():
    doses = [1e2, 1e3, 1e4, 1e5, 1e6, 1e8]
    median = []
    for i, d in enumerate(doses):
        _, noisy = _frames(d, 16, seed=10 + i)
        median.append(float(np.median(np.asarray(frame_sigma(noisy)))))
    assert median[-1] == 0.0  # 1e8 electrons: about 5e5 counts at the peak, no filter helps
    assert all(a >= b for a, b in zip(median, median[1:], strict=False)), median
    assert median[0] >= 2.0 and median[0] > median[3]


@pytest.mark.parametrize("dose", [3e2, 3e3, 3e4, 3e5])
def test_the_risk_chosen_filter_is_within_10_percent_of_the_best_grid_sigma(dose):
    clean, noisy = _frames(dose, 24, seed=int(np.log10(dose) * 10))
    out = np.asarray(jax.jit(dose_adaptive_gaussian)(noisy))
    ours = _true_mse(out, clean)
    best = min(_true_mse(y, clean) for _, y, _ in _grid_filters(noisy, SIGMA_GRID))
    assert ours <= 1.10 * best, (ours, best)


def test_gain_and_read_noise_are_recovered_from_mixed_poisson_gaussian_data():
    rng = np.random.default_rng(5)
    clean = np.broadcast_to(_pattern() * 3e5, (32, *SHAPE))
    noisy = 3.0 * rng.poisson(clean / 3.0) + rng.normal(0.0, 2.0, clean.shape)
    noise = estimate_noise(noisy)
    assert noise["valid"], noise["reason"]
    assert noise["gain"] == pytest.approx(3.0, rel=0.1)  # measured 3.24
    assert noise["read_noise"] == pytest.approx(2.0, rel=0.1)
    fn = _gaussian(1.5)
    true = _true_mse(fn(noisy.astype(np.float32)), clean)
    est = denoise_risk(noisy, fn, centre_weight=gaussian_centre_weight(SHAPE, 1.5))
    assert est.valid and est.mse == pytest.approx(true, rel=0.05)
    # given instead of measured: the same
    given = denoise_risk(noisy, fn, centre_weight=gaussian_centre_weight(SHAPE, 1.5), gain=3.0, read_noise=2.0)
    assert (given.gain, given.read_noise) == (3.0, 2.0) and given.mse == pytest.approx(true, rel=0.05)


def test_integers_that_are_not_poisson_counts_are_refused_by_name():
    rng = np.random.default_rng(6)
    clean = np.broadcast_to(_pattern() * 3e5, (16, *SHAPE))
    # over-dispersed integers: negative binomial with variance 10x the mean
    p = 0.1
    n = np.maximum(clean * p / (1 - p), 1e-9)
    noisy = rng.negative_binomial(n, p).astype(np.float32)
    est = denoise_risk(noisy, _gaussian(1.0))
    assert not est.valid and np.isnan(est.mse) and np.isnan(est.per_frame).all()
    assert "integer-valued" in est.reason and "not counts" in est.reason, est.reason
    assert 8.0 < est.checks["measured_gain"] < 12.0
    with pytest.raises(ValueError, match="variance is .*x their mean"):
        denoise_risk(noisy, _gaussian(1.0), strict=True)


def test_correlated_pixels_are_refused_by_name(poisson_frames):
    _, noisy = poisson_frames
    blurred = ndi.gaussian_filter(noisy.astype(np.float64), (0, 0.8, 0.8))  # filtered after counting
    est = denoise_risk(blurred, _gaussian(1.0))
    assert not est.valid and "correlated" in est.reason, est.reason
    # the independent counts pass the same check
    assert estimate_noise(noisy)["checks"]["neighbour_correlation"] == pytest.approx(-0.4, abs=0.05)


def test_the_public_names():
    assert pj.denoise_risk is denoise_risk and pj.RiskEstimate is RiskEstimate
    with pytest.raises(ValueError, match="same shape|keep the shape"):
        denoise_risk(np.ones((2, 16, 16), np.float32), lambda a: a[:, 1:])


def _matrix_filters(x, sigmas):
    """The reference: the filters as the dense row-normalised matrices ``G_h X G_w^T``."""
    import jax.numpy as jnp

    h, w = x.shape[-2:]
    hi = jax.lax.Precision.HIGHEST
    for s in sigmas:
        if s <= 0:
            yield 0.0, x, np.ones((h, w), np.float32)
            continue
        gh, gw = pj.ops.gaussian_matrix(h, float(s)), pj.ops.gaussian_matrix(w, float(s))
        y = jnp.einsum("ij,bjk->bik", jnp.asarray(gh), jnp.asarray(x), precision=hi)
        yield s, jnp.einsum("bik,lk->bil", y, jnp.asarray(gw), precision=hi), np.outer(np.diag(gh), np.diag(gw))


@pytest.mark.parametrize("shape", [(64, 64), (37, 50), (9, 12)])
def test_the_convolution_filters_equal_the_row_normalised_matrices(shape):
    x = np.random.default_rng(3).poisson(5.0, (3, *shape)).astype(np.float32)
    for (s, y, c), (s0, y0, c0) in zip(_grid_filters(x, SIGMA_GRID), _matrix_filters(x, SIGMA_GRID), strict=True):
        assert s == s0
        np.testing.assert_allclose(np.asarray(y), np.asarray(y0), rtol=0, atol=1e-5 * x.max())
        np.testing.assert_allclose(np.asarray(c), c0, rtol=1e-6)


@pytest.mark.parametrize("dose", [3e2, 3e3, 3e4, 3e5])
def test_the_risk_chosen_filter_equals_its_matrix_form(dose):
    import jax.numpy as jnp

    from prenet_jax.internal import noise_variance

    _, noisy = _frames(dose, 8, seed=7)
    out, sig = jax.jit(pj.pipeline._gaussian.risk_gaussian)(noisy)
    x = jnp.asarray(noisy)
    v = noise_variance(x)
    risks = [np.asarray(jnp.mean((y - x) ** 2 + 2.0 * c * v, axis=(-2, -1))) for _, y, c in _matrix_filters(x, SIGMA_GRID)]
    k = np.argmin(np.stack(risks, -1), axis=-1)  # first minimum: the narrower filter on ties
    np.testing.assert_array_equal(np.asarray(sig), np.asarray(SIGMA_GRID, np.float32)[k])
    ref = np.stack([np.asarray(list(_matrix_filters(x[b : b + 1], [SIGMA_GRID[k[b]]]))[0][1])[0] for b in range(len(k))])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-5 * noisy.max())
    np.testing.assert_allclose(
        np.asarray(grid_risks(noisy)),
        np.stack(risks, -1) - np.asarray(v.mean(axis=(-2, -1)))[:, None],
        rtol=1e-4,
        atol=1e-6 * noisy.max() ** 2,
    )
