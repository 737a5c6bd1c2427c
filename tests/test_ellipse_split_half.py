"""The split-half check of the ellipse in the file run (issue 27): pass 0 also fits the
means of the even- and odd-numbered sampled frames, and an estimate smaller than the
halves' disagreement is noise, not optics: not applied, with a warning and a record."""

from __future__ import annotations

import math

import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.io import read_result
from prenet_jax.preprocess import preprocess_file


def _cube(per_frame, seed: int, scan=(6, 6), shape=(64, 64), radius=14.0, counts=3e4) -> np.ndarray:
    """A scan whose frame ``i`` shows a disk under the ellipse ``per_frame(rng)``, off the
    centre by up to 1.5 px, Poisson counts (``counts`` in the disk)."""
    rng = np.random.default_rng(seed)
    n = scan[0] * scan[1]
    frames = []
    for _ in range(n):
        c = ((shape[0] - 1) / 2 + rng.uniform(-1.5, 1.5), (shape[1] - 1) / 2 + rng.uniform(-1.5, 1.5))
        img = pj.disk_pattern(shape, c, radius=radius, ellipse=per_frame(rng), lattice=None)
        frames.append(rng.poisson(img / img.sum() * counts))
    return np.stack(frames).reshape(*scan, *shape).astype(np.uint16)


def _run(tmp_path, cube):
    src = tmp_path / "cube.npy"
    np.save(src, cube)
    lines: list[str] = []
    res = preprocess_file(src, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, log=lines.append)
    return res, lines, read_result(tmp_path / "out.h5")["preprocessing"]


def test_random_per_frame_ellipses_without_a_common_one_are_not_applied(tmp_path):
    """Every frame its own ellipse (ratio 1.02-1.06 at a random angle), as the per-frame
    fits of the 8-frame Merlin file scatter: their mean has a small ellipse of no
    direction, which the two halves do not share."""
    cube = _cube(lambda rng: pj.Ellipse(rng.uniform(1.02, 1.06), rng.uniform(0, math.pi)), seed=1)
    res, lines, rec = _run(tmp_path, cube)
    warn = [line for line in lines if line.startswith("warning: the ellipse estimate")]
    assert warn and "two halves of the sampled frames disagree" in warn[0], lines
    assert res.ellipse.ratio == 1.0
    assert rec["ellipse_warning"] == warn[0]
    split = rec["ellipse_split_half"]
    assert split["difference"] > 2 * split["estimate"] / 3.0


def test_a_common_ellipse_is_applied(tmp_path):
    truth = pj.Ellipse(1.05, 0.4)
    res, lines, rec = _run(tmp_path, _cube(lambda rng: truth, seed=2))
    assert not [line for line in lines if line.startswith("warning: the ellipse")], lines
    assert res.ellipse.ratio == pytest.approx(1.05, abs=0.002)
    assert abs(res.ellipse.angle - truth.angle) < math.radians(1.0)
    split = rec["ellipse_split_half"]
    assert split["difference"] < 0.3 * split["estimate"], split
    assert split["ratio_a"] == pytest.approx(1.05, abs=0.003) and split["ratio_b"] == pytest.approx(1.05, abs=0.003)
    assert "ellipse_warning" not in rec
