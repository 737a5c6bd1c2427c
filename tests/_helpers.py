"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

import contextlib
import hashlib
import io
from pathlib import Path

from prenet_jax.cli import main


def sha(path) -> str:
    """SHA-256 of a file: that the input is byte-identical after a run."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_preprocess(*argv, weights: bool = False) -> tuple[int, str, str]:
    """``prenet-jax preprocess ARGV --no-progress`` in this process: (exit code, stdout, stderr).

    These tests exercise the file path (formats, faults, interrupts, masks, descan) with
    the classical methods, which need no compile of the networks: ``--classical`` is
    added unless ``weights`` is set or ARGV names weights. The bundled weights' default
    is tested in tests/test_bundled_weights.py.
    """
    argv = [str(a) for a in argv]
    if not weights and "--weights" not in argv:
        argv.append("--classical")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["preprocess", *argv, "--no-progress"])
    return rc, out.getvalue(), err.getvalue()


#: abTEM settings of a tiny simulation: 32 x 32 patterns from a 48-point grid, the
#: geometry of 256 from 384 at about a hundredth of the cost (a fraction of a second a task)
TINY_SIM = dict(
    pattern_size=32,
    gpts=48,
    extent_a=(12.0, 20.0),
    thickness_a=(4.0, 10.0),
    disk_radius_px=(2.0, 6.0),
    semiangle_mrad=(0.5, 40.0),
    slice_thickness_a=2.0,
)
