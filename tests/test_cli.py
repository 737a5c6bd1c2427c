"""The console script: `info` and the README's main job (`demo`)."""

import numpy as np

from prenet_jax.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    assert "prenet-jax" in capsys.readouterr().out


def test_demo_runs_end_to_end_and_recovers_the_truth(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ellipse found" in out
    r = np.load(tmp_path / "demo_result.npz")
    err = np.linalg.norm(r["centers"] - r["true_centers"], axis=-1)
    assert err.mean() < 0.1  # dose 2e5 per pattern, classical methods
    assert abs(r["ellipse"][0] - 1.08) < 0.01
    assert (tmp_path / "demo.png").stat().st_size > 10_000
