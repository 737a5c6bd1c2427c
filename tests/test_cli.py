"""The console script: `info` and the README's main job (`demo`)."""

import numpy as np

from prenet_jax.io._readers import read_result
from prenet_jax.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    assert "prenet-jax" in capsys.readouterr().out


def test_demo_runs_end_to_end_and_recovers_the_truth(tmp_path, capsys):
    from prenet_jax.cli._demo import DEMO_ELLIPSE

    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "centre error vs truth" in out
    r = read_result(tmp_path / "demo_corrected.h5")
    assert r["shape"] == (16, 16, 128, 128)
    pre = r["preprocessing"]
    ratio = [v for k, v in pre.items() if "ratio" in k.lower()]
    assert ratio and abs(float(np.ravel(ratio[0])[0]) - DEMO_ELLIPSE[0]) < 0.01
    mean_err = float(out.split("centre error vs truth: mean ")[1].split(" px")[0])
    assert mean_err < 0.1  # dose 2e5 per pattern, classical methods
    assert len(list(tmp_path.glob("*.png"))) >= 4  # the diagnostics
    # Running it again replaces the demo files rather than refusing.
    assert main(["demo", "-o", str(tmp_path)]) == 0
