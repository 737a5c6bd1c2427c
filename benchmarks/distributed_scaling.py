"""One scan, 1 and N local processes: `prenet-jax preprocess --distributed` scaling and
the cost of the merge.

Writes a synthetic chunked HDF5 cube (:func:`file_to_file.make_cube`), runs
`prenet-jax preprocess` on it with one process, then with N processes on this machine
(`infer/distributed/local.sh`), both with a fixed ellipse and no figures, and reads
the frames/s and the merge time from the logs. The outputs are compared frame by
frame. On a CPU the processes share the cores, so this measures the overhead of the
distribution (start-up, all-gathers, merge), not a speed-up; the speed-up is for
processes that each have their own GPU and disk bandwidth (docs/preprocess.md). The
result is appended to benchmarks/RESULTS.md.

    python benchmarks/distributed_scaling.py                    # 32x32 x 128x128 uint16, 2 processes
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import append_result  # noqa: E402
from file_to_file import make_cube  # noqa: E402


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return time.perf_counter() - t0, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--scan", type=int, nargs=2, default=(32, 32))
    ap.add_argument("--frame", type=int, nargs=2, default=(128, 128))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import numpy as np

    from prenet_jax.io import read_result

    env = dict(os.environ, PYTHONPATH=str(ROOT), PRENET_JAX=f"{sys.executable} -m prenet_jax.cli", PYTHON=sys.executable)
    opts = ["--ellipse", "1.05,23", "--no-diagnostics", "--no-progress", "--batch-size", str(args.batch_size), "--cpu", "--classical"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "scan.h5"
        make_cube(src, tuple(args.scan), tuple(args.frame), np.uint16, 1e4)
        size = src.stat().st_size
        one_s, one_log = run([sys.executable, "-m", "prenet_jax.cli", "preprocess", str(src), "-o", str(tmp / "one.h5"), *opts], env)
        n_s, n_log = run(
            ["bash", str(ROOT / "infer" / "distributed" / "local.sh"), "-n", str(args.processes), str(src), "-o", str(tmp / "n.h5"), *opts],
            env,
        )
        same = np.array_equal(read_result(tmp / "one.h5", data=True)["data"], read_result(tmp / "n.h5", data=True)["data"])
        out_mib = (tmp / "n.h5").stat().st_size / 2**20

    def rate(log: str) -> str:
        m = re.search(r"\(([0-9.]+) frames/s\)", log)
        return m.group(1) if m else "?"

    merge = re.search(r"merge: \d+ parts, ([0-9.]+) MiB of compressed chunks copied in ([0-9.]+) s", n_log)
    frames = args.scan[0] * args.scan[1]
    lines = [
        f"({args.scan[0]}, {args.scan[1]}, {args.frame[0]}, {args.frame[1]}) uint16 chunked HDF5 ({size / 2**20:.0f} MiB), classical "
        f"methods, fixed ellipse, no figures, batch {args.batch_size}, {os.cpu_count()} CPU cores shared by the processes; "
        f"outputs identical: {same}",
        "",
        "| processes | wall, process start to exit (s) | pass 1 frames/s (process 0's log) | frames/s end to end | merge |",
        "|---:|---:|---:|---:|---|",
        f"| 1 | {one_s:.1f} | {rate(one_log)} | {frames / one_s:.0f} | - |",
        f"| {args.processes} | {n_s:.1f} | {rate(n_log)} | {frames / n_s:.0f} | "
        + (f"{merge.group(1)} MiB in {merge.group(2)} s ({out_mib:.0f} MiB output)" if merge else "?")
        + " |",
    ]
    print("\n".join(lines))
    if not args.no_record:
        append_result(f"One scan, 1 and {args.processes} local processes (benchmarks/distributed_scaling.py)", lines)


if __name__ == "__main__":
    main()
