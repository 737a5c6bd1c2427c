"""``--descan`` on the file path (prenet_jax.preprocess._descan): a centres pass, the
fit, then pass 1 about the chosen centres; against cubes of known centres."""

import h5py
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.conventions import FLAG_DESCAN
from prenet_jax.io import InputError
from prenet_jax.preprocess import preprocess_file
from tests._helpers import run_preprocess, sha

SCAN, SHAPE = (12, 12), (32, 32)
DRIFT = (0.12, -0.06, 0.05, 0.1)  # px per scan step: d_row/d_Rx, d_row/d_Ry, d_col/d_Rx, d_col/d_Ry


def _cube(tmp_path, name, jitter, seed=4, outlier=False):
    sim = pj.synthetic_cube(scan=SCAN, shape=SHAPE, radius=5.0, descan=DRIFT, jitter=jitter, dose=2000, seed=seed, lattice=None)
    cube = sim["cube"]
    if outlier:  # one frame whose estimate fails: it reads its disk 2 px off the truth
        cube = cube.copy()
        cube[5, 7] = np.roll(cube[5, 7], 2, axis=0)
    path = tmp_path / f"{name}.npy"
    np.save(path, cube)
    return path, sim["centers"]


def _run(src, out, descan, diagnostics=False, **kw):
    return preprocess_file(
        src, out, descan=descan, ellipse=pj.Ellipse.identity(), diagnostics=diagnostics, progress=False, log=lambda s: None, **kw
    )


def _err(c, truth):
    return float(np.linalg.norm(c - truth, axis=-1).mean())


@pytest.fixture(scope="module")
def planar(tmp_path_factory):
    """One pure planar descan (no jitter), run per frame and with each mode."""
    tmp = tmp_path_factory.mktemp("planar")
    src, truth = _cube(tmp, "planar", jitter=0.0)
    before = sha(src)
    res = {m: _run(src, tmp / f"{m}.h5", None if m == "none" else m, m in ("none", "plane")) for m in ("none", "frame", "plane", "auto")}
    assert sha(src) == before
    return tmp, truth, res


def test_a_plane_beats_per_frame_centres_on_a_planar_descan(planar):
    tmp, truth, res = planar
    e = {m: _err(r.centers, truth) for m, r in res.items()}
    # 144 frames of ~0.05 px centre noise: the plane averages them (~sqrt(144 / 3) = 7x; measured ~5x)
    assert e["none"] > 0.03 and e["plane"] < e["none"] / 3, e
    assert e["frame"] == pytest.approx(e["none"], abs=1e-6)
    assert e["auto"] <= 1.1 * min(e["frame"], e["plane"]), e
    # the fitted drift per scan step is the one drawn
    from prenet_jax.internal import scan_step_drift

    np.testing.assert_allclose(scan_step_drift(res["plane"].descan.fit), np.reshape(DRIFT, (2, 2)), atol=0.006)
    # the output frames are centred: the mean after-centre sits on the frame centre
    c0 = (np.asarray(SHAPE) - 1) / 2
    after = res["plane"].friedel_after.reshape(-1, 2)
    assert np.abs(np.nanmean(after, 0) - c0).max() < 0.02


def test_the_record_holds_the_model_the_measured_centres_and_the_residuals(planar):
    tmp, truth, res = planar
    r = res["plane"]
    with h5py.File(tmp / "plane.h5") as f:
        rec = f["datacube_root/metadatabundle/preprocessing"]
        g = {k: rec[k][()] for k in rec}
    assert g["descan_mode"] == b"plane" and g["descan_degree"] == 1 and g["descan_terms"] == b"1 y x"
    meas = np.stack([g["qx0_meas"], g["qy0_meas"]], -1)
    fit = np.stack([g["qx0_fit"], g["qy0_fit"]], -1)
    used = np.stack([g["qx0"], g["qy0"]], -1)
    np.testing.assert_allclose(meas - fit, np.stack([g["qx0_residuals"], g["qy0_residuals"]], -1), atol=1e-9)
    np.testing.assert_allclose(used, fit, atol=1e-4)  # plane: every frame warped about the model
    np.testing.assert_allclose(meas, res["none"].centers, atol=1e-4)  # the centres pass finds what pass 1 would
    assert g["descan_coefficients"].shape == (2, 3) and g["descan_outliers"].shape == SCAN
    np.testing.assert_allclose(g["descan_coefficients"], r.descan.fit.coefficients)
    # Each frame's centre uncertainty (Poisson thinning, scaled by its counts) is written,
    # weights the fit, and matches the per-frame error of the centres found (the mean
    # distance of a 2-D Gaussian is 1.2533 sigma per axis).
    assert g["descan_noise_source"] == b"thinning" and g["descan_noise"].shape == (*SCAN, 2)
    sigma_true = _err(res["none"].centers, truth) / 1.2533
    assert 0.6 < float(np.median(g["descan_noise"])) / sigma_true < 1.6, (np.median(g["descan_noise"]), sigma_true)
    # the centre figure has the model, the residual and the uncertainty maps (5 columns instead of 2)
    import matplotlib.image

    wide = matplotlib.image.imread(tmp / "plane_centers.png").shape[1]
    assert wide > 2.2 * matplotlib.image.imread(tmp / "none_centers.png").shape[1]


def test_with_jitter_per_frame_centres_win_and_auto_follows_them(tmp_path):
    src, truth = _cube(tmp_path, "jitter", jitter=0.4, seed=5)
    e = {m: _err(_run(src, tmp_path / f"{m}.h5", m).centers, truth) for m in ("frame", "plane", "auto")}
    assert e["frame"] < e["plane"] / 3, e
    assert e["auto"] <= 1.1 * min(e["frame"], e["plane"]), e


def test_an_outlier_frame_is_flagged_and_given_the_model(tmp_path):
    src, truth = _cube(tmp_path, "outlier", jitter=0.0, outlier=True)
    res = {m: _run(src, tmp_path / f"{m}.h5", m) for m in ("frame", "plane", "auto")}
    assert np.linalg.norm(res["frame"].centers[5, 7] - truth[5, 7]) > 1.8  # the frame's own centre is off
    for mode, r in res.items():
        flagged = (r.flags & FLAG_DESCAN) != 0
        assert flagged[5, 7] and flagged.sum() <= 2, (mode, np.argwhere(flagged))
        if mode != "frame":
            assert np.linalg.norm(r.centers[5, 7] - truth[5, 7]) < 0.05, mode


def test_descan_options_are_checked_before_anything_is_written(tmp_path):
    src, _ = _cube(tmp_path, "c", jitter=0.0)
    with pytest.raises(InputError, match="--descan 'linear'"):
        _run(src, tmp_path / "o.h5", "linear")
    with pytest.raises(InputError, match="centre stage is off"):
        _run(src, tmp_path / "o.h5", "plane", pipeline=pj.Pipeline.classical(center_method="none"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy"]


def test_the_command_line_descan(tmp_path):
    src, truth = _cube(tmp_path, "c", jitter=0.0)
    rc, out, err = run_preprocess(src, "-o", tmp_path / "o.h5", "--descan", "plane", "--ellipse", "1,0", "--no-diagnostics")
    assert rc == 0, err
    assert "descan (plane): plane fitted to the centres of 144 of 144 frames" in out
    assert "drift per scan step: row +0.12" in out and "pass 1 uses the plane's centre for every frame" in out
    with h5py.File(tmp_path / "o.h5") as f:
        rec = f["datacube_root/metadatabundle/preprocessing"]
        used = np.stack([rec["qx0"][()], rec["qy0"][()]], -1)
    assert _err(used, truth) < 0.02
