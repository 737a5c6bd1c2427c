"""`prenet-jax preprocess --refine`: self-calibrated centres and ellipse on the file path,
with the values before and after in the summary, the record and the figures."""

import math

import numpy as np
import pytest
from _helpers import run_preprocess as run
from _helpers import sha

import prenet_jax as pj
from prenet_jax.conventions import FLAG_REFINE
from prenet_jax.io import read_result

#: drawn distortion: ratio ~1.05, a-axis at 30 deg
TRUTH = pj.Ellipse(1.05, math.radians(30.0))


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """A cube of known centres and ellipse (a direct disk, as the mean pattern of an
    amorphous or polycrystalline scan gives it), preprocessed once with --refine and no
    weights: the classical pipeline (centre of mass, edge fit) is the start."""
    d = tmp_path_factory.mktemp("refine")
    cube = pj.synthetic_cube(scan=(6, 6), shape=(64, 64), radius=12.0, ellipse=TRUTH, jitter=0.7, seed=3, lattice=None)
    src = d / "scan.npy"
    np.save(src, cube["cube"].reshape(36, 64, 64))
    before = (sha(src), src.stat().st_mtime_ns)
    rc, out, err = run(src, "--scan", "6,6", "-o", d / "out.h5", "--cpu", "--refine", "--no-denoise")
    return {"dir": d, "src": src, "out": d / "out.h5", "truth": cube, "before": before, "rc": rc, "stdout": out, "stderr": err}


def test_refine_runs_without_weights_and_leaves_the_input(refined):
    assert refined["rc"] == 0, refined["stderr"]
    assert refined["out"].is_file()
    assert (sha(refined["src"]), refined["src"].stat().st_mtime_ns) == refined["before"]
    p = read_result(refined["out"])["preprocessing"]
    assert "center=com + friedel refinement" in refined["stdout"] and p["weights_id"].startswith("none")
    assert '"center_refine": "friedel"' in p["config_json"] and '"refine": "all"' in p["options_json"]
    for name in ("mean", "centers", "polar", "radial"):
        assert (refined["dir"] / f"out_{name}.png").stat().st_size > 10_000


def test_record_holds_the_values_before_and_after(refined):
    p = read_result(refined["out"])["preprocessing"]
    assert p["refine"] is True and p["ellipse_source"] == "fit"
    start = (p["refine_ellipse_ratio_before"], p["refine_ellipse_angle_before"])
    end = (p["refine_ellipse_ratio_after"], p["refine_ellipse_angle_after"])
    # the ellipse undone is the refined one
    assert (p["ellipse_ratio"], p["ellipse_angle"]) == pytest.approx(end)
    assert isinstance(p["refine_ellipse_ok"], bool)
    assert p["refine_variance_after"] <= p["refine_variance_before"]
    # The start (the ring fit) is within the targets already (measured: 3e-5 in
    # ratio, 0.01 deg); the refinement keeps it there (measured: 5e-4, 0.19 deg: the
    # minimum of the variance of a 36-frame noisy mean is not exactly at the truth, so
    # it does not improve on the ring fit here; it is for starts further off).
    for ratio, angle in (start, end):
        assert abs(ratio - TRUTH.ratio) <= 1e-3 and abs(angle - TRUTH.angle) <= math.radians(0.3), (start, end)
    # every centre refinement held, and moved the centre of mass by a fraction of a pixel
    assert p["refine_centers_failed"] == 0 and not (p["flags"] & FLAG_REFINE).any()
    assert p["refine_center_shift_frames"] == 36 and 0.0 <= p["refine_center_shift_median"] < 0.5
    found = np.stack([p["qx0"], p["qy0"]], -1)
    assert np.median(np.linalg.norm(found - refined["truth"]["centers"], axis=-1)) < 0.05
    # the corrected mean is round: the residual ellipse fitted to it
    assert abs(p["residual_ellipse_ratio"] - 1.0) < 0.01 and np.isfinite(p["residual_ellipse_angle"])


def test_summary_shows_the_refinement(refined):
    out = refined["stdout"]
    p = read_result(refined["out"])["preprocessing"]
    assert "center=com + friedel refinement, ellipse=fit + refinement" in out
    assert "ellipse (fit, refined): ratio a/b" in out
    assert f"ratio {p['refine_ellipse_ratio_before']:.4f} -> {p['refine_ellipse_ratio_after']:.4f}" in out
    assert f"median shift {p['refine_center_shift_median']:.3f} px" in out
    assert "0 of 36 frames fell back to the estimate" in out
    assert f"after correction the mean pattern's ratio is {p['residual_ellipse_ratio']:.4f}" in out


def test_refine_needs_the_centre_stage(refined, tmp_path):
    rc, _, err = run(refined["src"], "--scan", "6,6", "-o", tmp_path / "x.h5", "--cpu", "--refine", "--no-center")
    assert rc == 2 and "--no-center" in err
    assert not list(tmp_path.iterdir())


def test_refine_centers_or_the_ellipse_alone(refined, tmp_path):
    """``--refine centers`` refines the centres and undoes the fitted ellipse as fitted;
    ``--refine ellipse`` refines the ellipse and leaves the centres as estimated."""
    full = read_result(refined["out"])["preprocessing"]
    rc, out, err = run(refined["src"], "--scan", "6,6", "-o", tmp_path / "c.h5", "--cpu", "--refine", "centers", "--no-denoise")
    assert rc == 0, err
    c = read_result(tmp_path / "c.h5")["preprocessing"]
    assert c["refine"] is True and "refine_ellipse_ratio_after" not in c and c["refine_centers_failed"] == 0
    # the same pass 0 as the full refinement, whose start this is
    assert (c["ellipse_ratio"], c["ellipse_angle"]) == pytest.approx(
        (full["refine_ellipse_ratio_before"], full["refine_ellipse_angle_before"])
    )
    np.testing.assert_allclose(c["qx0"], full["qx0"], atol=1e-4)  # the same refined centres
    assert "ellipse=fit;" in out and "beam centres by Friedel symmetry" in out
    rc, out, err = run(refined["src"], "--scan", "6,6", "-o", tmp_path / "e.h5", "--cpu", "--refine", "ellipse", "--no-denoise")
    assert rc == 0, err
    e = read_result(tmp_path / "e.h5")["preprocessing"]
    assert '"center_refine": "none"' in e["config_json"] and "refine_centers_failed" not in e
    assert abs(e["refine_ellipse_ratio_after"] - TRUTH.ratio) <= 1e-3
    rc, _, err = run(refined["src"], "--scan", "6,6", "-o", tmp_path / "p.h5", "--cpu", "--no-denoise")
    assert rc == 0, err
    np.testing.assert_array_equal(e["qx0"], read_result(tmp_path / "p.h5")["preprocessing"]["qx0"])  # centres as estimated
    assert "beam centres by Friedel symmetry" not in out
    rc, _, err = run(refined["src"], "--scan", "6,6", "-o", tmp_path / "x.h5", "--cpu", "--refine", "ellipse", "--ellipse", "1.05,30")
    assert rc == 2 and "nothing to refine" in err
