"""End-to-end throughput of `prenet-jax preprocess`, file to file, and where the time goes.

Writes a synthetic 4D-STEM cube (Poisson counts, descan, jitter, ellipse) as a chunked
HDF5 file, preprocesses it with the streaming path (reading, computing and writing
overlapped), then times each stage alone on the same data:

- read:    the chunk-aligned block reads of the input, nothing else;
- compute: the compiled step (+ the bookkeeping step) on device batches already in place;
- write:   compressing and storing output blocks (one real output block, repeated).

The shares are each stage's time alone over the sum of the three; ``overlap`` is the
sum over the end-to-end time (1 = no overlap; the ideal is the largest share's inverse).
The result is appended to benchmarks/RESULTS.md.

    python benchmarks/file_to_file.py                       # 32x32 scan of 256x256 uint16 (128 MiB)
    python benchmarks/file_to_file.py --scan 256 256        # the paper's 256^4 cube (8 GiB): GPU machine
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def make_cube(path: Path, scan, frame, dtype, dose: float, seed: int = 0) -> None:
    """Poisson-noisy disks with a descan ramp and an ellipse, written row by row."""
    import h5py

    import prenet_jax as pj

    rng = np.random.default_rng(seed)
    rx, ry = scan
    # a small set of distinct patterns, shifted by a descan ramp: cheap to make at any size
    base = pj.synthetic_cube(scan=(4, 4), shape=frame, radius=frame[0] / 12, ellipse=pj.Ellipse(1.05, 0.4), jitter=0.6, seed=seed)[
        "cube"
    ].reshape(16, *frame)
    base = base / base.reshape(16, -1).sum(1)[:, None, None] * dose
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "data",
            shape=(rx, ry) + tuple(frame),
            dtype=dtype,
            chunks=(1, max(1, min(ry, (1 << 20) // (frame[0] * frame[1] * np.dtype(dtype).itemsize))), *frame),
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        for i in range(rx):
            row = base[(i * ry + np.arange(ry)) % 16]
            ds[i] = rng.poisson(row).astype(dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", type=int, nargs=2, default=(32, 32))
    ap.add_argument("--frame", type=int, nargs=2, default=(256, 256))
    ap.add_argument("--dtype", default="uint16")
    ap.add_argument("--dose", type=float, default=2e4, help="electrons per pattern")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--compression", default="gzip", choices=("gzip", "none"))
    ap.add_argument("--output-dtype", default="float32")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one; use the machine's local disk)")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args(argv)

    import h5py
    import jax

    import prenet_jax as pj
    from prenet_jax.io import EMDWriter, open_input, plan_blocks
    from prenet_jax.preprocess import make_post, output_dtype_for, preprocess_file

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="prenet_bench_"))
    src, dst = scratch / "cube.h5", scratch / "cube_pre.h5"
    t0 = time.perf_counter()
    make_cube(src, tuple(args.scan), tuple(args.frame), args.dtype, args.dose)
    n = args.scan[0] * args.scan[1]
    mib = n * args.frame[0] * args.frame[1] * np.dtype(args.dtype).itemsize / 2**20
    print(
        f"cube {tuple(args.scan) + tuple(args.frame)} {args.dtype}: {mib:.0f} MiB raw, {src.stat().st_size / 2**20:.0f} MiB on disk ({time.perf_counter() - t0:.0f} s to make)"
    )

    pipe = pj.Pipeline.classical(batch_size=args.batch_size)
    ell = pj.Ellipse(1.05, 0.4)
    # warm-up on a tiny file: the end-to-end time below is not compile time
    with h5py.File(scratch / "warm.h5", "w") as f:
        f["data"] = h5py.File(src, "r")["data"][:1, : min(args.scan[1], 2 * args.batch_size)]
    # the same options for the warm-up and the timed run: one compiled step
    options = dict(
        pipeline=pipe,
        ellipse=ell,
        diagnostics=False,
        checksum=False,
        progress=False,
        log=lambda s: None,
        compression=args.compression,
        output_dtype=args.output_dtype,
        overwrite=True,
    )
    preprocess_file(scratch / "warm.h5", scratch / "warm_pre.h5", **options)

    # ---- end to end (pass 1 with the ellipse given; pass 0 timed separately)
    res = preprocess_file(src, dst, **options)
    wall = res.seconds["wall"]
    t0 = time.perf_counter()
    with open_input(src) as s:
        pipe.calibrate(s.frames(), min(n, pipe.config.calibration_frames))
    t_pass0 = time.perf_counter() - t0

    # ---- each stage alone
    source = open_input(src)
    out_dt = output_dtype_for(args.output_dtype, source.dtype)
    with EMDWriter(scratch / "probe.h5", source.shape, out_dt, compression=args.compression, overwrite=True) as probe:
        cc = probe.chunk_cols
        probe.abort()
    blocks = plan_blocks(source.shape, source.scan_chunks, cc, source.frame_bytes, 32 << 20)
    t0 = time.perf_counter()
    for i0, i1, j0, j1 in blocks:
        source.read_block(i0, i1, j0, j1)
    t_read = time.perf_counter() - t0

    b = pipe.batch_size
    host = source.read_frames(np.arange(min(b, n)))
    if host.shape[0] < b:
        host = np.concatenate([host, np.zeros((b - host.shape[0],) + host.shape[1:], host.dtype)])
    dev = jax.device_put(host, pipe.data_sharding)
    m = jax.device_put(np.asarray(ell.matrix(), np.float32), pipe.replicated)
    post = make_post(np.dtype(out_dt))
    valid = jax.device_put(np.ones(b, bool), pipe.data_sharding)
    sat = jax.device_put(np.float32(np.inf), pipe.replicated)
    steps = -(-n // b)
    jax.block_until_ready(post(dev, *pipe.step_fn(pipe.params, dev, m), valid, sat, m))
    t0 = time.perf_counter()
    for _ in range(steps):
        c, cen, fl = pipe.step_fn(pipe.params, dev, m)
        r = post(dev, c, cen, fl, valid, sat, m)
    jax.block_until_ready((cen, r))
    t_compute = time.perf_counter() - t0

    with h5py.File(dst, "r") as f:
        i0, i1, j0, j1 = blocks[0]
        blk = f["datacube_root/datacube/data"][i0:i1, j0:j1]
    t0 = time.perf_counter()
    with EMDWriter(scratch / "probe.h5", source.shape, out_dt, compression=args.compression, overwrite=True) as w:
        for i0, i1, j0, j1 in blocks:
            w.write_block(i0, j0, blk[: i1 - i0, : j1 - j0])
        w.abort()
    t_write = time.perf_counter() - t0
    source.close()

    total = t_read + t_compute + t_write
    dev_txt = ", ".join(sorted({d.device_kind for d in pipe.devices}))
    line = (
        f"| {datetime.date.today()} | {dev_txt} x{len(pipe.devices)} ({os.cpu_count()} cores) | {tuple(args.scan) + tuple(args.frame)} {args.dtype} -> {out_dt}, {args.compression} "
        f"| {args.batch_size} | **{n / wall:.0f}** | {n / t_pass0:.0f} | {t_read / total:.0%} / {t_compute / total:.0%} / {t_write / total:.0%} | {total / wall:.2f} |"
    )
    print(
        f"end to end: {n} frames in {wall:.2f} s = {n / wall:.0f} frames/s ({mib / wall:.0f} MiB/s of raw input); pass 0 alone {t_pass0:.2f} s for {min(n, pipe.config.calibration_frames)} frames"
    )
    print(
        f"alone: read {t_read:.2f} s, compute {t_compute:.2f} s, write {t_write:.2f} s -> shares {t_read / total:.0%} / {t_compute / total:.0%} / {t_write / total:.0%}; overlap {total / wall:.2f}x"
    )
    print(f"output {dst.stat().st_size / 2**20:.0f} MiB")
    if not args.no_append:
        results = HERE / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n\nEach script appends its own section; newest last.\n")
        text = results.read_text()
        header = "\n## file_to_file.py: `prenet-jax preprocess` end to end, file to file\n\n"
        header += "Classical methods (gaussian, centre of mass, fixed ellipse; pass 0 timed alone). Shares: each stage timed alone on the same data (read / compute / write); overlap = sum of the three over the end-to-end time.\n\n"
        header += "| date | device | cube -> output | batch | frames/s end to end | pass 0 frames/s | read / compute / write | overlap |\n|---|---|---|---|---|---|---|---|\n"
        versions = f"jax {jax.__version__}, numpy {np.__version__}, h5py {h5py.__version__}, Python {platform.python_version()}"
        with results.open("a") as fh:
            last = text.rsplit("\n## ", 1)[-1] if "\n## " in text else ""
            if not last.startswith("file_to_file.py"):  # others append too: start our own section
                fh.write(header)
            fh.write(line + f" <!-- {versions} -->\n")
        print(f"appended to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
