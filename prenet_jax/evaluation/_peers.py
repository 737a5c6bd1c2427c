"""Peer tools (py4DSTEM, pyxem) on the evaluation data, each in its own interpreter.

py4DSTEM 0.14 pins numpy < 2 and pyxem pulls hyperspy, so neither may import next to
prenet-jax. Each peer runs in a subprocess of an interpreter that has it: the one named
by ``PRENET_PY4DSTEM_PYTHON`` / ``PRENET_PYXEM_PYTHON``, else this interpreter when the
package imports here. Frames travel as ``.npy`` files; the scripts below need only numpy
and the peer.

Conventions are converted here, once:

- py4DSTEM's ``(qx0, qy0)`` index the first and second detector axes: ``(row, col)``.
  Its ellipse ``theta`` is the a-axis angle from qx (row) toward qy (col):
  :func:`prenet_jax.preprocess._run.ellipse_from_py4dstem` converts it.
- pyxem's ``get_direct_beam_position`` returns the shift that centres each pattern,
  ``(x, y) = (col, row)``, relative to ``signal_shape / 2``: the centre is
  ``signal_shape / 2 - shift``. (The tests check both on a disk at a known centre.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["peer_python", "available_peers", "run_peer"]

_ENV = {"py4dstem": "PRENET_PY4DSTEM_PYTHON", "pyxem": "PRENET_PYXEM_PYTHON"}
_MODULE = {"py4dstem": "py4DSTEM", "pyxem": "pyxem"}

# ---- scripts run in the peer's interpreter: argv = task, input.npy, output.npy, json options
_PY4DSTEM = r"""
import sys, json, warnings, numpy as np
warnings.filterwarnings("ignore")
import py4DSTEM
from py4DSTEM.process.calibration.origin import get_origin, get_origin_friedel
from py4DSTEM.process.calibration.ellipse import fit_ellipse_amorphous_ring
task, src, dst, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
x = np.load(src)
if task == "version":
    np.save(dst, np.zeros(0)); print(py4DSTEM.__version__); sys.exit(0)
if task in ("get_origin", "get_origin_friedel"):
    out = np.full((x.shape[0], 2), np.nan)
    radii = opts.get("radii")
    for i in range(x.shape[0]):
        dc = py4DSTEM.DataCube(data=x[i][None, None].astype(np.float64))
        try:
            if task == "get_origin":
                qx0, qy0, _ = get_origin(dc, r=float(radii[i]) if radii is not None else None)
            else:
                qx0, qy0 = get_origin_friedel(dc, upsample_factor=int(opts.get("upsample", 1)))
            out[i] = float(np.asarray(qx0).ravel()[0]), float(np.asarray(qy0).ravel()[0])
        except Exception:
            pass
elif task == "fit_ellipse_amorphous_ring":
    out = np.full((x.shape[0], 5), np.nan)
    for i in range(x.shape[0]):
        c = opts["centers"][i]; ri, ro = opts["fitradii"][i]
        try:
            (x0, y0, a, b, th), _ = fit_ellipse_amorphous_ring(x[i].astype(np.float64), (c[0], c[1]), (ri, ro))
            out[i] = x0, y0, a, b, th
        except Exception:
            pass
else:
    raise SystemExit("unknown task " + task)
np.save(dst, out)
print(py4DSTEM.__version__)
"""

_PYXEM = r"""
import sys, json, warnings, numpy as np
warnings.filterwarnings("ignore")
import pyxem
task, src, dst, opts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
x = np.load(src)
if task == "version":
    np.save(dst, np.zeros(0)); print(pyxem.__version__); sys.exit(0)
if task == "center_direct_beam":
    s = pyxem.signals.Diffraction2D(x.astype(np.float32))
    kw = dict(opts.get("kwargs", {}))
    shifts = s.get_direct_beam_position(method=opts.get("method", "center_of_mass"), lazy_output=False, **kw)
    sh = np.asarray(shifts.data, np.float64).reshape(-1, 2)          # (x, y) = (col, row) shift to centre
    half = np.array(s.axes_manager.signal_shape, np.float64) / 2.0   # (W/2, H/2)
    c = half[None, :] - sh                                            # centre (col, row)
    out = np.stack([c[:, 1], c[:, 0]], 1)                             # -> (row, col)
else:
    raise SystemExit("unknown task " + task)
np.save(dst, out)
print(pyxem.__version__)
"""

_SCRIPTS = {"py4dstem": _PY4DSTEM, "pyxem": _PYXEM}


def peer_python(peer: str) -> str | None:
    """The interpreter that runs ``peer`` ("py4dstem" or "pyxem"), or None if none has it."""
    env = os.environ.get(_ENV[peer])
    if env:
        return env if Path(env).exists() else None
    if importlib.util.find_spec(_MODULE[peer]) is not None:
        return sys.executable
    return None


def run_peer(peer: str, task: str, frames: np.ndarray, options: dict | None = None, timeout: float = 3600) -> tuple[np.ndarray, str]:
    """Run ``task`` of ``peer`` on ``frames`` (N, H, W) in the peer's interpreter.

    Returns ``(result array, peer version)``; raises RuntimeError when the run fails.
    """
    py = peer_python(peer)
    if py is None:
        raise RuntimeError(f"{peer} is not installed here (set {_ENV[peer]} to an interpreter that has it)")
    with tempfile.TemporaryDirectory(prefix="prenet-peer-") as tmp:
        src, dst = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(src, np.ascontiguousarray(frames, np.float32))
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)  # our packages must not shadow the peer's
        out = subprocess.run([py, "-c", _SCRIPTS[peer], task, str(src), str(dst), json.dumps(options or {})],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if out.returncode != 0 or not dst.exists():
            raise RuntimeError(f"{peer} {task} failed: {out.stderr.strip()[-1500:]}")
        version = (out.stdout.strip().splitlines() or ["?"])[-1]
        return np.load(dst), version


def available_peers(wanted=("py4dstem", "pyxem")) -> dict[str, str]:
    """``{peer: version}`` of the peers that run here (a quick subprocess each)."""
    found = {}
    for p in wanted:
        if peer_python(p) is None:
            continue
        try:
            _, v = run_peer(p, "version", np.zeros((1, 4, 4), np.float32), timeout=600)
            found[p] = v
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            continue
    return found
