"""The classical path against py4DSTEM's own functions, on the same machine (issue 17).

The cube: ``pj.synthetic_cube`` with a 64 x 64 scan of 256 px frames (radius 28, ellipse
1.08 at 0.5 rad, jitter 0.8 px, seed 11), noise-free, scaled to a peak of 1000 counts and
stored as uint16 ``.npy``. Both tools read the same file.

- ours: ``prenet-jax preprocess`` end to end (pass 0, pass 1 into a gzip HDF5 file, the
  diagnostics and the input's checksum), with the CoM and with Friedel centres, after a
  warm-up run on a small cube of the same frames that holds the compilation;
- py4DSTEM: ``get_origin`` + ``get_shifted_ar`` (bilinear) of every frame in memory, and
  ``get_origin_friedel`` alone (run in its own interpreter:
  ``PRENET_PY4DSTEM_PYTHON=/path/to/venv/bin/python``, py4DSTEM 0.14.18 with numpy < 2).

Centre errors are against the cube's true centres; the ellipse error against its truth.

    PRENET_PY4DSTEM_PYTHON=... python benchmarks/classical_vs_py4dstem.py --dir /tmp/c17 --record
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import append_result  # noqa: E402

import prenet_jax as pj  # noqa: E402
from prenet_jax.preprocess import preprocess_file  # noqa: E402

TRUTH = pj.Ellipse(1.08, 0.5)


def make_cube(d: Path, scan: tuple[int, int], size: int) -> tuple[Path, np.ndarray]:
    path = d / f"cube_{scan[0]}x{scan[1]}_{size}.npy"
    truth = d / f"cube_{scan[0]}x{scan[1]}_{size}_centers.npy"
    if not path.exists():
        c = pj.synthetic_cube(scan=scan, shape=(size, size), radius=28.0, ellipse=TRUTH, jitter=0.8, seed=11)
        cube = np.round(c["cube"] / c["cube"].max() * 1000).astype(np.uint16)
        np.save(truth, c["centers"])
        np.save(path, cube)
    return path, np.load(truth)


def angle_error_deg(a: float, b: float) -> float:
    return math.degrees(abs(math.remainder(a - b, math.pi)))


def ours(src: Path, warm: Path, d: Path, method: str, truth: np.ndarray) -> dict:
    pipe = pj.Pipeline.classical(center_method=method)
    opts = dict(pipeline=pipe, overwrite=True, progress=False, log=lambda s: None)
    preprocess_file(warm, d / f"warm_{method}.h5", **opts)  # compiles every program the timed run uses
    t0 = time.perf_counter()
    r = preprocess_file(src, d / f"ours_{method}.h5", **opts)
    wall = time.perf_counter() - t0
    err = np.linalg.norm(r.centers - truth, axis=-1)
    return {
        "wall": wall,
        "pass0": r.seconds["pass0"],
        "frames": r.frames,
        "center_err": float(err.mean()),
        "ratio_err": abs(r.ellipse.ratio - TRUTH.ratio),
        "angle_err": angle_error_deg(r.ellipse.angle, TRUTH.angle),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="scratch folder (the cube is cached there)")
    p.add_argument("--scan", type=int, nargs=2, default=(64, 64))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    src, truth = make_cube(args.dir, tuple(args.scan), args.size)
    warm = args.dir / "warm.npy"
    np.save(warm, np.load(src, mmap_mode="r")[:2])  # the same frames and batch shape, 2 scan rows

    rows = {m: ours(src, warm, args.dir, m, truth) for m in ("com", "friedel")}
    n = rows["com"]["frames"]
    lines = [
        f"cube: pj.synthetic_cube, scan {args.scan[0]}x{args.scan[1]} of {args.size}x{args.size} uint16 frames (peak 1000), "
        "radius 28, ellipse 1.08 at 0.5 rad, jitter 0.8 px, seed 11; noise-free; `benchmarks/classical_vs_py4dstem.py`",
        "",
        "| tool and method | what is timed | s | frames/s | centre error, mean (px) | ellipse ratio / angle error |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in rows.items():
        lines.append(
            f"| prenet-jax preprocess, {m} | end to end: pass 0 ({r['pass0']:.1f} s) + pass 1 + file + figures | {r['wall']:.1f} | "
            f"**{n / r['wall']:.0f}** | {r['center_err']:.4f} | {r['ratio_err']:.4f} / {r['angle_err']:.2f}° |"
        )
    peer = os.environ.get("PRENET_PY4DSTEM_PYTHON")
    if peer:
        out = args.dir / "py4dstem.json"
        worker = Path(__file__).with_name("_py4dstem_classical.py")
        subprocess.run([peer, str(worker), str(src), str(out)], check=True, env=dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1"))
        q = json.loads(out.read_text())
        com_err = np.linalg.norm(np.asarray(q["com"]) - truth, axis=-1).mean()
        fr_err = np.linalg.norm(np.asarray(q["friedel"]) - truth, axis=-1).mean()
        t_com = q["com_s"] + q["shift_s"]
        lines += [
            f"| py4DSTEM {q['py4dstem']} get_origin + get_shifted_ar (bilinear) | CoM ({q['com_s']:.1f} s) + shift, in memory | {t_com:.1f} | "
            f"**{n / t_com:.0f}** | {com_err:.4f} | – |",
            f"| py4DSTEM {q['py4dstem']} get_origin_friedel | the origins only | {q['friedel_s']:.1f} | **{n / q['friedel_s']:.0f}** | {fr_err:.4f} | – |",
            "",
            f"CoM end to end / py4DSTEM CoM + shift: **{t_com / rows['com']['wall']:.2f}x** (target >= 2); "
            f"Friedel end to end / py4DSTEM get_origin_friedel alone: **{q['friedel_s'] / rows['friedel']['wall']:.2f}x** (target > 1).",
        ]
    else:
        lines += ["", "(py4DSTEM not run: set PRENET_PY4DSTEM_PYTHON)"]
    print("\n".join(lines))
    if args.record:
        append_result("Classical path against py4DSTEM, same machine", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
