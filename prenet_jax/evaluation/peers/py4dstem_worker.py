"""py4DSTEM's side of a peer run, executed by the py4DSTEM interpreter (never imported
by prenet_jax: it needs only numpy and py4DSTEM).

Usage: ``python py4dstem_worker.py TASK IN.npy OUT.npy OPTIONS.json``

Tasks
-----
version
    prints the version (and writes an empty array).
get_origin, get_origin_friedel
    ``IN (N, H, W)`` -> ``OUT (N, 2)``: py4DSTEM's ``(qx0, qy0)`` per frame, i.e.
    ``(row, col)``; NaN where it fails. Options: ``radii`` (the disk radius per frame,
    get_origin), ``upsample`` (get_origin_friedel's upsample factor).
fit_ellipse_amorphous_ring
    ``IN (N, H, W)`` -> ``OUT (N, 5)``: ``(x0, y0, a, b, theta)`` per pattern, NaN where
    it fails. Options: ``centers`` (a start per pattern) and ``fitradii`` (the annulus).

The last line printed is py4DSTEM's version.
"""

import json
import sys
import warnings

import numpy as np
import py4DSTEM
from py4DSTEM.process.calibration.ellipse import fit_ellipse_amorphous_ring
from py4DSTEM.process.calibration.origin import get_origin, get_origin_friedel

# The peer's warnings would bury a real error in the stderr that run_peer reports: its
# import is quiet by run_peer's PYTHONWARNINGS=ignore, its runs by this (set after the
# import, which may reset the filters).
warnings.filterwarnings("ignore")


def origins(task: str, frames: np.ndarray, opts: dict) -> np.ndarray:
    """The origin of every frame, one single-pattern DataCube at a time."""
    out = np.full((frames.shape[0], 2), np.nan)
    radii = opts.get("radii")
    for i in range(frames.shape[0]):
        dc = py4DSTEM.DataCube(data=frames[i][None, None].astype(np.float64))
        try:
            if task == "get_origin":
                qx0, qy0, _ = get_origin(dc, r=float(radii[i]) if radii is not None else None)
            else:
                qx0, qy0 = get_origin_friedel(dc, upsample_factor=int(opts.get("upsample", 1)))
            out[i] = float(np.asarray(qx0).ravel()[0]), float(np.asarray(qy0).ravel()[0])
        except Exception:  # noqa: BLE001, S110 - any failure of the method on this frame: NaN, scored as a failure
            pass
    return out


def ring_fits(frames: np.ndarray, opts: dict) -> np.ndarray:
    """The amorphous-ring ellipse of every pattern."""
    out = np.full((frames.shape[0], 5), np.nan)
    for i in range(frames.shape[0]):
        c = opts["centers"][i]
        ri, ro = opts["fitradii"][i]
        try:
            (x0, y0, a, b, th), _ = fit_ellipse_amorphous_ring(frames[i].astype(np.float64), (c[0], c[1]), (ri, ro))
            out[i] = x0, y0, a, b, th
        except Exception:  # noqa: BLE001, S110 - any failure of the method on this pattern: NaN, scored as a failure
            pass
    return out


def main(argv: list[str]) -> None:
    task, src, dst, options = argv[1:5]
    with open(options) as f:
        opts = json.load(f)
    frames = np.load(src)
    if task == "version":
        out = np.zeros(0)
    elif task in ("get_origin", "get_origin_friedel"):
        out = origins(task, frames, opts)
    elif task == "fit_ellipse_amorphous_ring":
        out = ring_fits(frames, opts)
    else:
        raise SystemExit("unknown task " + task)
    np.save(dst, out)
    print(py4DSTEM.__version__)


if __name__ == "__main__":
    main(sys.argv)
