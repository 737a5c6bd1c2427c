"""Split the files of a folder over the GPUs of a node: one ``infer/folder.py`` process each.

    python infer/split_files.py RAW_DIR -o OUT_DIR                    # every visible GPU
    python infer/split_files.py RAW_DIR -o OUT_DIR --gpus 0,1 -- --ellipse 1.04,32.5
    python infer/split_files.py RAW_DIR -o OUT_DIR --cpu-workers 2    # no GPU (a test)

Process ``k`` of ``N`` sees only GPU ``k`` (``CUDA_VISIBLE_DEVICES``) and takes every
N-th file (``folder.py --shard k/N``). Each process reads, computes and writes on its
own, so unlike splitting every batch over the GPUs (``folder.py`` alone) the reading
and writing scale with the GPUs too: the better choice for many files when the disks or
the decompression, not the GPU, limit the rate. The files are dealt by name, so files
of very different sizes can leave one GPU working after the others have finished.

Arguments after ``--`` go to every ``folder.py``. The exit status is 1 if any file
failed (each process lists its own failures; all of them are repeated at the end).
SIGINT / SIGTERM are passed on to the processes, which stop without partial outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "folder.py"


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` (set by SLURM and most
    schedulers), else every GPU ``nvidia-smi`` lists. JAX is not imported here: it would
    reserve memory on every GPU before the workers start."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="folder of raw 4D-STEM files")
    ap.add_argument("-o", "--output", type=Path, required=True, help="folder of the outputs")
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--gpus", default=None, metavar="I,J", help="GPUs to use, one process each (default: every visible GPU)")
    who.add_argument("--cpu-workers", type=int, default=None, metavar="N", help="N processes on the CPU instead")
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    if args.cpu_workers:
        workers = [({}, ["--cpu"]) for _ in range(args.cpu_workers)]
    else:
        gpus = args.gpus.split(",") if args.gpus else visible_gpus()
        if not gpus:
            print("error: no GPU visible (CUDA_VISIBLE_DEVICES, nvidia-smi); give --gpus or --cpu-workers", file=sys.stderr)
            return 2
        workers = [({"CUDA_VISIBLE_DEVICES": g}, []) for g in gpus]

    n = len(workers)
    scratch = Path(tempfile.mkdtemp(prefix="prenet_split_"))  # the workers' JSON summaries
    procs = []
    for k, (env, flags) in enumerate(workers):
        cmd = [
            sys.executable,
            str(FOLDER),
            str(args.folder),
            "-o",
            str(args.output),
            "--shard",
            f"{k}/{n}",
            "--summary",
            str(scratch / f"{k}.json"),
            *flags,
            *extra,
        ]
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    print(f"{n} processes: {', '.join(str(p.pid) for p in procs)}", flush=True)

    def pass_on(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGINT, pass_on)
    signal.signal(signal.SIGTERM, pass_on)
    codes = [p.wait() for p in procs]

    done = skipped = 0
    failed = []
    for k in range(n):
        path = scratch / f"{k}.json"
        if path.exists():  # absent if the process died before its end (a signal, out of memory)
            s = json.loads(path.read_text())
            done, skipped, failed = done + len(s["done"]), skipped + len(s["skipped"]), failed + s["failed"]
            path.unlink()
    scratch.rmdir()
    print(f"all {n} processes: done {done}, skipped {skipped}, failed {len(failed)}; exit codes {codes}", flush=True)
    for f in failed:
        print(f"failed: {f['input']}: {f['error']}", file=sys.stderr)
    signalled = [c for c in codes if c < 0]
    if signalled:
        return 128 - signalled[0]  # as a shell reports a process ended by a signal
    return 1 if failed or any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
