"""Peer tools (py4DSTEM, pyxem) on the evaluation data, each in its own interpreter.

py4DSTEM 0.14 pins numpy < 2 and pyxem pulls hyperspy, so neither may import next to
prenet-jax. Each peer runs in a subprocess of an interpreter that has it: the one named
by ``PRENET_PY4DSTEM_PYTHON`` / ``PRENET_PYXEM_PYTHON``, else this interpreter when the
package imports here. That interpreter runs a worker script of this folder
(``py4dstem_worker.py``, ``pyxem_worker.py``: numpy and the peer only, no prenet_jax) as
``python WORKER TASK IN.npy OUT.npy OPTIONS.json``; frames and results travel as
``.npy`` files.

Conventions are converted in the workers and here, once:

- py4DSTEM's ``(qx0, qy0)`` index the first and second detector axes: ``(row, col)``.
  Its ellipse ``theta`` is the a-axis angle from qx (row) toward qy (col):
  :func:`prenet_jax.preprocess.ellipse_from_py4dstem` converts it.
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

__all__ = ["PEERS", "available_peers", "peer_python", "run_peer", "worker_path"]

PEERS = ("py4dstem", "pyxem")
_ENV = {"py4dstem": "PRENET_PY4DSTEM_PYTHON", "pyxem": "PRENET_PYXEM_PYTHON"}
_MODULE = {"py4dstem": "py4DSTEM", "pyxem": "pyxem"}


def worker_path(peer: str) -> Path:
    """The worker script the interpreter of ``peer`` runs."""
    return Path(__file__).with_name(f"{peer}_worker.py")


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
    The tasks and their options are those of the worker scripts.
    """
    py = peer_python(peer)
    if py is None:
        raise RuntimeError(f"{peer} is not installed here (set {_ENV[peer]} to an interpreter that has it)")
    with tempfile.TemporaryDirectory(prefix="prenet-peer-") as tmp:
        src, dst, opts = Path(tmp) / "in.npy", Path(tmp) / "out.npy", Path(tmp) / "options.json"
        np.save(src, np.ascontiguousarray(frames, np.float32))
        # A file, not an argument: per-frame options of a large set exceed the limit of one argument.
        opts.write_text(json.dumps(options or {}))
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)  # our packages must not shadow the peer's
        out = subprocess.run(
            [py, str(worker_path(peer)), task, str(src), str(dst), str(opts)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if out.returncode != 0 or not dst.exists():
            raise RuntimeError(f"{peer} {task} failed: {out.stderr.strip()[-1500:]}")
        version = (out.stdout.strip().splitlines() or ["?"])[-1]
        return np.load(dst), version


def available_peers(wanted=PEERS) -> dict[str, str]:
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
