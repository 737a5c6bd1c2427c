"""What a preprocessed file says about itself, against the truth of a synthetic cube:
the beam centres of the corrected frames measured independently of the estimator that
chose the shift, and the counts the shift moved out of the frame (flagged, and kept
with ``--pad``)."""

import h5py
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.conventions import EDGE_LOSS_FLAG, FLAG_EDGE
from prenet_jax.internal import after_checks
from prenet_jax.preprocess import preprocess_file
from tests._helpers import run_preprocess

ELLIPSE = pj.Ellipse(1.05, 0.4)
PAD = 12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 8 x 8 scan of 64 px frames whose descan carries the disk up to 6 px off the
    frame centre (some frames lose over 1 % of their counts when recentred), run with
    the CoM centres and the known ellipse, without and with ``pad``."""
    d = tmp_path_factory.mktemp("after")
    c = pj.synthetic_cube(
        scan=(8, 8), shape=(64, 64), radius=10.0, ellipse=ELLIPSE, descan=(1.2, -0.8, 1.0, 1.2), jitter=0.3, dose=1e5, seed=3
    )
    np.save(d / "in.npy", c["cube"].astype(np.float32))
    pipe = pj.Pipeline.classical(denoise_method="none")
    res = {}
    for pad in (0, PAD):
        r = preprocess_file(
            d / "in.npy", d / f"out{pad}.h5", pipeline=pipe, ellipse=ELLIPSE, pad=pad, progress=False, diagnostics=False, log=lambda s: None
        )
        with h5py.File(d / f"out{pad}.h5") as f:
            res[pad] = (
                r,
                f["datacube_root/datacube/data"][()],
                {k: v[()] for k, v in f["datacube_root/metadatabundle/preprocessing"].items()},
            )
    return c, res, d


def test_the_lost_fraction_is_what_the_output_frames_miss_and_pad_keeps_it(runs):
    c, res, _ = runs
    counts_in = c["cube"].sum((-2, -1))
    r, out, rec = res[0]
    deficit = 1 - out.sum((-2, -1)) / counts_in
    np.testing.assert_allclose(r.lost, deficit, atol=0.002)  # measured: within 0.0009
    assert r.lost.max() > 0.02  # the far frames lose a few per cent ...
    flagged = (r.flags & FLAG_EDGE) != 0
    np.testing.assert_array_equal(flagged, r.lost > EDGE_LOSS_FLAG)  # ... and exactly those over 1 % are flagged
    assert 0 < flagged.sum() < flagged.size
    np.testing.assert_allclose(rec["counts_lost"], r.lost, rtol=1e-6)
    # Padded by PAD px, the output frames hold every count, and are 2 PAD px larger.
    r, out, rec = res[PAD]
    assert out.shape == (8, 8, 64 + 2 * PAD, 64 + 2 * PAD) and int(rec["output_pad"]) == PAD
    assert r.lost.max() == 0 and not (r.flags & FLAG_EDGE).any()
    np.testing.assert_allclose(out.sum((-2, -1)), counts_in, rtol=2e-3)
    # The beam sits at the padded frame's centre; the centres found are the input's.
    np.testing.assert_allclose(rec["frame_center"], [(64 + 2 * PAD - 1) / 2] * 2)
    np.testing.assert_allclose(res[PAD][0].centers, res[0][0].centers, atol=1e-4)


def test_the_independent_check_sees_the_true_residual_that_the_self_check_hides(runs):
    """The CoM centres the frames, so a CoM of the output mostly measures the CoM
    against itself; the Friedel centre of the output is a measure of another kind.
    Truth: a corrected frame's beam is at ``c0 + D^-1 (true - found)``."""
    c, res, _ = runs
    assert after_checks(pj.PipelineConfig.classical()) == ("com", "friedel")
    assert after_checks(pj.PipelineConfig.classical(center_method="friedel")) == ("friedel", "com")
    assert after_checks(pj.PipelineConfig.classical(center_refine="friedel")) == ("friedel", "com")
    r, _, rec = res[0]
    c0 = np.array([31.5, 31.5])
    true_after = c0 + np.einsum("ij,...j->...i", np.linalg.inv(np.asarray(ELLIPSE.matrix())), c["centers"] - r.centers)
    true_spread = true_after.std((0, 1))  # measured: 0.019, 0.017 px
    independent = r.friedel_after.std((0, 1))  # measured: 0.027, 0.020 px
    self_check = r.centers_after.std((0, 1))  # measured: 0.005, 0.005 px
    assert np.all(independent >= 0.8 * true_spread) and np.all(independent <= 2.0 * true_spread)
    assert np.all(self_check < 0.5 * true_spread)
    assert np.median(np.linalg.norm(r.friedel_after - true_after, axis=-1)) < 0.04
    np.testing.assert_allclose(rec["qx0_after_friedel"], r.friedel_after[..., 0])


def test_the_summary_names_both_checks_and_suggests_a_pad_that_keeps_the_counts(runs, tmp_path):
    c, _, d = runs
    farthest = np.abs(c["centers"] - 31.5).max()  # the largest offset of a true centre (px): 9.0
    rc, out, err = run_preprocess(d / "in.npy", "-o", tmp_path / "o.h5", "--no-denoise", "--ellipse", "1.05,22.918", "--no-diagnostics")
    assert rc == 0, err
    assert "after, Friedel symmetry (independent check)" in out and "after, centre of mass (self-consistency)" in out
    line = next(s for s in out.splitlines() if s.startswith("counts moved out of the frame"))
    pad = int(line.split("--pad ")[1].split()[0])
    assert f"frames over 1% (flagged {FLAG_EDGE})" in line and farthest < pad <= farthest + 4
    rc, out, err = run_preprocess(
        d / "in.npy", "-o", tmp_path / "p.h5", "--no-denoise", "--ellipse", "1.05,22.918", "--no-diagnostics", "--pad", pad
    )
    assert rc == 0, err
    assert "0 frames over 1%" in out and "max 0.00%" in out
    with pytest.raises(SystemExit) as e:
        run_preprocess(d / "in.npy", "-o", tmp_path / "q.h5", "--pad", "-3")
    assert e.value.code == 2 and not (tmp_path / "q.h5").exists()
