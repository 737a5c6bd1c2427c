"""The console script: `info` and the README's main job (`demo`)."""

import jax
import numpy as np

import prenet_jax as pj
from prenet_jax.cli import main
from prenet_jax.io import read_result


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    # what a bug report needs: the two versions and every local device
    assert f"prenet-jax {pj.__version__}, jax {jax.__version__}" in out
    for d in jax.local_devices():
        assert f"device {d.id}: {d.device_kind}" in out
    # and what the bundled weights are, and the methods they make the default
    assert "bundled weights: center_fine, center_net (trained at commit" in out
    assert "default methods: denoise gaussian, centre network (friedel where within 0.5 px), ellipse fit" in out


def test_demo_runs_end_to_end_and_recovers_the_truth(tmp_path):
    from prenet_jax.internal import DEMO, DEMO_ELLIPSE, DEMO_PAD

    assert main(["demo", "-o", str(tmp_path)]) == 0
    truth = pj.synthetic_cube(ellipse=pj.Ellipse(*DEMO_ELLIPSE), **DEMO)  # the demo's cube, from its fixed seed
    r = read_result(tmp_path / "demo_corrected.h5")
    assert r["shape"] == (16, 16, 128 + 2 * DEMO_PAD, 128 + 2 * DEMO_PAD)  # padded: no count leaves a frame
    pre = r["preprocessing"]
    assert not np.any(pre["flags"]), np.unique(pre["flags"])  # nothing lost, saturated, off the model or beamless
    found = np.stack([pre["qx0"], pre["qy0"]], axis=-1)  # the centres measured in the input frames
    err = np.linalg.norm(found - truth["centers"], axis=-1)
    assert err.mean() < 0.03  # dose 2e5 per pattern, the bundled weights (measured 0.016 px)
    assert pre["weights_id"].startswith("bundled release weights")
    assert abs(pre["ellipse_ratio"] - DEMO_ELLIPSE[0]) < 0.01
    assert abs(np.angle(np.exp(2j * (pre["ellipse_angle"] - DEMO_ELLIPSE[1])))) / 2 < np.radians(2.0)
    assert len(list(tmp_path.glob("demo_corrected_*.png"))) == 4  # the diagnostics
    # Running it again replaces the demo files rather than refusing.
    assert main(["demo", "-o", str(tmp_path)]) == 0
