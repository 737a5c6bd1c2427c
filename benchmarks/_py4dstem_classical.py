"""py4DSTEM's side of ``classical_vs_py4dstem.py``, run in the peer's own interpreter
(py4DSTEM 0.14.18 needs numpy < 2): reads the cube (``.npy``), times its classical
centring, and writes the centres and times as JSON. Imports only numpy and py4DSTEM.

    python _py4dstem_classical.py CUBE.npy OUT.json
"""

import json
import sys
import time
import warnings

import numpy as np
import py4DSTEM
from py4DSTEM.process.calibration.origin import get_origin, get_origin_friedel
from py4DSTEM.process.utils import get_shifted_ar

warnings.filterwarnings("ignore")


def main(cube_path: str, out_path: str) -> None:
    data = np.load(cube_path)
    rx, ry, h, w = data.shape
    dc = py4DSTEM.DataCube(data=data)
    res = {"py4dstem": py4DSTEM.__version__, "numpy": np.__version__}

    # Centre of mass of the (masked) direct disk, then every frame shifted to the frame
    # centre by bilinear interpolation, in memory: the classical recentring.
    t0 = time.perf_counter()
    qx0, qy0, _ = get_origin(dc)
    t1 = time.perf_counter()
    c0 = ((h - 1) / 2.0, (w - 1) / 2.0)
    out = np.empty((rx, ry, h, w), np.float32)
    for i in range(rx):
        for j in range(ry):
            out[i, j] = get_shifted_ar(data[i, j].astype(np.float64), c0[0] - qx0[i, j], c0[1] - qy0[i, j], periodic=False, bilinear=True)
    t2 = time.perf_counter()
    res.update(com=np.stack([qx0, qy0], -1).tolist(), com_s=t1 - t0, shift_s=t2 - t1)
    del out

    # Friedel: the origin by cross-correlation of each frame with its 180° rotation.
    t0 = time.perf_counter()
    fx, fy = get_origin_friedel(dc)
    res.update(friedel=np.stack([np.asarray(fx), np.asarray(fy)], -1).tolist(), friedel_s=time.perf_counter() - t0)
    with open(out_path, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
