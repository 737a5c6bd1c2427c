"""The evaluation on real recorded files (prenet_jax/evaluation/_real.py): the consensus
of independent estimators, the disk-edge circle fit, and the default command on a real
Merlin recording (tests/data/real, see tests/data/README.md)."""

from pathlib import Path

import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.cli import main
from prenet_jax.evaluation import consensus, edge_circle, evaluate_real, write_real_report

REAL = Path(__file__).parent / "data" / "real"


def test_consensus_is_the_mean_of_the_agreeing_estimators():
    truth = np.array([[10.0, 20.0], [30.0, 40.0]])
    est = {
        "a": truth + [[0.2, 0.0], [0.0, 0.0]],
        "b": truth - [[0.2, 0.0], [3.0, 0.0]],
        "c": truth + [[0.0, 0.3], [0.0, 5.0]],
        "d": truth + [[9.0, 9.0], [np.nan, np.nan]],  # an outlier, and a failure
    }
    centre, agreeing = consensus(est)
    np.testing.assert_allclose(centre[0], truth[0] + [0.0, 0.1], atol=1e-9)  # a, b, c agree: d is left out
    assert agreeing[0] == 3
    assert np.all(np.isnan(centre[1])) and agreeing[1] < 3  # nothing agrees on frame 1


@pytest.mark.parametrize(
    ("centre", "radius", "clip"),
    [((60.3, 70.8), 10.0, None), ((61.7, 4.2), 12.0, 0.5), ((40.2, 50.6), 5.6, 0.5)],
    ids=["disk", "saturated-cut-off", "small-saturated"],
)
def test_edge_circle_finds_a_drawn_disk(centre, radius, clip):
    frame = pj.disk_pattern((128, 128), centre, radius, lattice=None)
    saturation = None
    if clip is not None:
        saturation = clip * frame.max()
        frame = np.minimum(frame, saturation)
    got = edge_circle(frame * 100, None if saturation is None else saturation * 100)
    np.testing.assert_allclose(got, centre, atol=0.35)


def test_the_default_command_on_a_real_merlin_file(tmp_path):
    rows = evaluate_real([REAL / "001_4x2_6bit.mib"], tmp_path, peers={})
    (r,) = rows
    assert r["rc"] == 0 and not r["traceback"]
    assert r["scan"] == [2, 4] and r["frame"] == [256, 256]
    assert r["saturation"] == 63 and r["flags"]["saturated"] == 8  # from the counter depth
    assert r["center_used"] in ("com", "friedel")  # the saturated disk sends the run to a classical estimator
    assert any("saturated in 8 of 8" in w for w in r["warnings"])
    # Our centres sit on the plateau's edge circle (the estimators disagree here: no consensus).
    assert r["ours_to_edge_circle"]["median"] < 1.0
    path = write_real_report(rows, tmp_path)
    text = path.read_text()
    assert "001_4x2_6bit.mib" in text and (tmp_path / r["figure"]).exists()
    assert (tmp_path / "real.json").exists()


def test_evaluate_real_names_a_missing_file(tmp_path, capsys):
    assert main(["evaluate", "--real", str(tmp_path / "nothing.mib"), "-o", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
