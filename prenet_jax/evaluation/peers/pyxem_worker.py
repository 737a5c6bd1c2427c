"""pyxem's side of a peer run, executed by the pyxem interpreter (never imported by
prenet_jax: it needs only numpy and pyxem).

Usage: ``python pyxem_worker.py TASK IN.npy OUT.npy OPTIONS.json``

Tasks
-----
version
    prints the version (and writes an empty array).
center_direct_beam
    ``IN (N, H, W)`` -> ``OUT (N, 2)``: the direct-beam centre ``(row, col)`` of each
    frame by ``get_direct_beam_position``. Options: ``method`` (default
    ``center_of_mass``) and ``kwargs`` (passed on).

The last line printed is pyxem's version.
"""

import json
import sys
import warnings

import numpy as np
import pyxem

# The peer's warnings would bury a real error in the stderr that run_peer reports: its
# import is quiet by run_peer's PYTHONWARNINGS=ignore, its runs by this (set after the
# import, which may reset the filters).
warnings.filterwarnings("ignore")


def direct_beam_centers(frames: np.ndarray, opts: dict) -> np.ndarray:
    """pyxem returns the shift that centres each pattern, ``(x, y) = (col, row)``,
    relative to ``signal_shape / 2``; the centre is ``signal_shape / 2 - shift``."""
    s = pyxem.signals.Diffraction2D(frames.astype(np.float32))
    kw = dict(opts.get("kwargs", {}))
    shifts = s.get_direct_beam_position(method=opts.get("method", "center_of_mass"), lazy_output=False, **kw)
    sh = np.asarray(shifts.data, np.float64).reshape(-1, 2)  # (x, y) = (col, row) shift to centre
    half = np.array(s.axes_manager.signal_shape, np.float64) / 2.0  # (W/2, H/2)
    c = half[None, :] - sh  # centre (col, row)
    return np.stack([c[:, 1], c[:, 0]], 1)  # -> (row, col)


def main(argv: list[str]) -> None:
    task, src, dst, options = argv[1:5]
    with open(options) as f:
        opts = json.load(f)
    frames = np.load(src)
    if task == "version":
        out = np.zeros(0)
    elif task == "center_direct_beam":
        out = direct_beam_centers(frames, opts)
    else:
        raise SystemExit("unknown task " + task)
    np.save(dst, out)
    print(pyxem.__version__)


if __name__ == "__main__":
    main(sys.argv)
