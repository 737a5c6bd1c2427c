"""Many files in one run: does reading the next file ahead save the time its reads take?

Writes ``--files`` synthetic cubes (``--format npy``: raw uint16 Poisson counts, as a
detector writes them, which do not compress; ``h5``: :func:`file_to_file.make_cube`,
chunked and compressed, a few MiB) and runs :func:`prenet_jax.preprocess.preprocess_files` over
them twice, with the page cache dropped before each run (``/proc/sys/vm/drop_caches``;
without the right to drop it the files are in memory and the comparison means
nothing, so the script stops): once reading each file only when its turn comes, once
reading the next file ahead while the current one runs (the default). The time to read
one file cold (alone, ``cat``-like) is measured too. The result is appended to
benchmarks/RESULTS.md.

    python benchmarks/batch_read_ahead.py                    # 3 .npy files of 32x32 x 256x256 uint16 (128 MiB each)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import append_result  # noqa: E402
from file_to_file import make_cube  # noqa: E402


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def cold_read(path: Path) -> float:
    drop_caches()
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3)
    ap.add_argument("--scan", type=int, nargs=2, default=(32, 32))
    ap.add_argument("--frame", type=int, nargs=2, default=(256, 256))
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--format", choices=("npy", "h5"), default="npy")
    ap.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary folder on the disk of /var/tmp)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if not drop_caches():
        sys.exit("cannot drop the page cache (needs root and a writable /proc/sys/vm/drop_caches): the comparison would mean nothing")

    import numpy as np

    import prenet_jax as pj
    from prenet_jax.preprocess import preprocess_files

    with tempfile.TemporaryDirectory(dir=args.dir or "/var/tmp") as tmp:
        tmp = Path(tmp)
        files = [tmp / f"scan{i}.{args.format}" for i in range(args.files)]
        for i, f in enumerate(files):
            if args.format == "h5":
                make_cube(f, tuple(args.scan), tuple(args.frame), np.uint16, args.dose, seed=i)
                continue
            rng = np.random.default_rng(i)
            rows = np.lib.format.open_memmap(f, "w+", np.uint16, tuple(args.scan) + tuple(args.frame))
            pattern = pj.synthetic_cube(scan=(1, 1), shape=tuple(args.frame), radius=args.frame[0] / 12, seed=i)["cube"][0, 0]
            for r in range(args.scan[0]):  # Poisson counts: incompressible, like a detector's raw frames
                rows[r] = rng.poisson(pattern / pattern.sum() * args.dose, (args.scan[1],) + tuple(args.frame))
            rows.flush()
            del rows
        size = files[0].stat().st_size
        read_s = float(np.median([cold_read(f) for f in files]))
        kw = dict(ellipse=pj.Ellipse(1.05, 0.4), diagnostics=False, progress=False, log=lambda s: None, overwrite=True)
        pipe = pj.Pipeline.classical()
        preprocess_files(files[:1], tmp / "warm", pipeline=pipe, **kw)  # compile once, outside the timings
        times = {}
        for name, ahead in (("no read-ahead", False), ("read-ahead", True)):
            drop_caches()
            t0 = time.perf_counter()
            sts = preprocess_files(files, tmp / name.replace(" ", "_"), pipeline=pipe, read_ahead=ahead, **kw)
            times[name] = (time.perf_counter() - t0, [s.seconds for s in sts], [s.read_ahead for s in sts])
            assert all(s.status == "done" for s in sts), [s.reason for s in sts]
    frames = args.scan[0] * args.scan[1]
    lines = [
        f"{args.files} files of ({args.scan[0]}, {args.scan[1]}, {args.frame[0]}, {args.frame[1]}) uint16, "
        f"{'raw .npy' if args.format == 'npy' else 'chunked gzip HDF5'} "
        f"({size / 2**20:.0f} MiB each, {os.cpu_count()} cores), classical methods, fixed ellipse, batch {pipe.batch_size}, "
        f"page cache dropped before each run; one file read cold alone: {read_s:.2f} s ({size / 2**20 / read_s:.0f} MiB/s)",
        "",
        "| run | wall (s) | per file (s) | frames/s | read ahead (MiB per file) |",
        "|---|---:|---|---:|---|",
    ]
    for name, (wall, per, ahead) in times.items():
        lines.append(
            f"| {name} | {wall:.1f} | {', '.join(f'{t:.1f}' for t in per)} | {args.files * frames / wall:.0f} | "
            f"{', '.join(f'{b / 2**20:.0f}' for b in ahead)} |"
        )
    print("\n".join(lines))
    if not args.no_record:
        append_result("Many files: reading the next file ahead (benchmarks/batch_read_ahead.py)", lines)


if __name__ == "__main__":
    main()
