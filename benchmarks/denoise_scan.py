"""Speed and memory of the scan denoiser (``denoise_method="scan"``) on 256 x 256 frames.

Two measurements, each against the frame-by-frame risk-chosen Gaussian on the same data:

1. in memory: :func:`prenet_jax.pipeline.scan_gaussian` on a ``--scan`` cube of analytic
   diffraction patterns (a disk with Bragg disks, moved by a descan plane plus jitter,
   1e3 electrons per frame, Poisson), frames per second after the first (compiling) block;
2. file to file: ``prenet-jax preprocess --denoise-method scan`` on a ``--file-scan``
   cube written as ``.npy`` (uint16), wall time and the process's peak resident memory
   (``ru_maxrss`` of the child), against the same command with the default denoiser.

    python benchmarks/denoise_scan.py                  # about 4 minutes of 2 CPU cores
    python benchmarks/denoise_scan.py --append         # also add the section to RESULTS.md
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import prenet_jax as pj
from prenet_jax.pipeline import scan_gaussian

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_result  # noqa: E402

SIZE = 256
DOSE = 1e3


def make_cube(rx: int, ry: int, seed: int = 0) -> np.ndarray:
    """Poisson counts of a crystal-like pattern moved by a descan plane plus 0.3 px jitter."""
    rng = np.random.default_rng(seed)
    base = np.asarray(
        pj.disk_pattern(
            (SIZE, SIZE), (127.5, 127.5), 20.0, None, lattice=((0.0, 2.0), (1.73, 1.0)), orders=2, edge=1.0, bragg_intensity=0.2
        )
    )
    from scipy.ndimage import shift

    out = np.empty((rx, ry, SIZE, SIZE), np.uint16)
    for i in range(rx):
        for j in range(ry):
            d = (0.02 * i + 0.3 * rng.standard_normal(), -0.015 * j + 0.3 * rng.standard_normal())
            p = np.maximum(shift(base, d, order=1), 0)
            out[i, j] = rng.poisson(p / p.sum() * DOSE)
    return out


def in_memory(rx: int, ry: int) -> list[str]:
    cube = make_cube(rx, ry)
    scan_gaussian(cube[:2, :ry])  # compile (the block shape of the run below)
    t0 = time.perf_counter()
    res = scan_gaussian(cube)
    t_scan = time.perf_counter() - t0
    pipe = pj.Pipeline.classical(center_method="none", ellipse_method="none")
    flat = cube.reshape(-1, SIZE, SIZE)
    pipe.denoise(flat[:128])
    t0 = time.perf_counter()
    pipe.denoise(flat)
    t_gauss = time.perf_counter() - t0
    n = rx * ry
    return [
        f"In memory, a {rx}x{ry} scan of {SIZE}x{SIZE} frames at {DOSE:g} electrons (compiled beforehand):",
        "",
        "| denoiser | frames/s | estimated PSNR gain |",
        "|---|---:|---:|",
        f"| scan (`scan_gaussian`, 5x5 window, solved weights on) | {n / t_scan:.1f} | {res.psnr_gain:.1f} dB |",
        f"| frame by frame (risk-chosen Gaussian, batch 128) | {n / t_gauss:.1f} | |",
        "",
    ]


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MiB) of a child process."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def file_to_file(rx: int, ry: int) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "scan.npy"
        np.save(src, make_cube(rx, ry, seed=1))
        size = src.stat().st_size / 2**20
        exe = [sys.executable, "-m", "prenet_jax.cli", "preprocess", str(src), "--no-progress", "--no-diagnostics", "--classical"]
        rows = []
        # the default first: the children's peak RSS is a maximum over all children so far
        for name, extra in (("frame by frame (default Gaussian)", []), ("scan (--denoise-method scan)", ["--denoise-method", "scan"])):
            wall, rss = _run(exe + extra + ["-o", str(Path(d) / f"out{len(rows)}.h5")])
            rows.append(f"| {name} | {wall:.1f} | {rx * ry / wall:.1f} | {rss:.0f} |")
    return [
        f"File to file (`prenet-jax preprocess --classical`), a {rx}x{ry} scan of {SIZE}x{SIZE} uint16 frames ({size:.0f} MiB), "
        "wall time including start-up and compilation; peak RSS: the largest child so far (the scan run is second):",
        "",
        "| denoiser | wall (s) | frames/s | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scan", type=int, default=16, help="in-memory scan side (default 16)")
    ap.add_argument("--file-scan", type=int, default=32, help="file scan side (default 32)")
    ap.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    a = ap.parse_args()
    lines = in_memory(a.scan, a.scan) + file_to_file(a.file_scan, a.file_scan)
    print("\n".join(lines))
    if a.append:
        append_result("Scan denoiser: speed and memory (benchmarks/denoise_scan.py)", lines)


if __name__ == "__main__":
    main()
