"""Interrupt real ``prenet-jax preprocess`` runs at random moments (issue 13's check).

Not collected by pytest (a script, minutes of CPU): run it by hand after touching the
streaming, the writer or the signal handling::

    .venv/bin/python tests/stress_interrupts.py --runs 10

It times one uninterrupted run, then starts the command ``--runs`` times and sends
SIGINT or SIGTERM (chosen at random) after a random delay between 0 and 1.2 times that
duration, so some signals land in start-up, some in compilation, pass 0, streaming or
the closing of the file, and a few after the end. Every run must leave either the whole
output (exit 0, a readable file of the right shape) or nothing but the input (exit 130
or 143, one line saying what was interrupted, no traceback); the input is always
byte-identical. Exit status: 0 when every run kept the promise, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _command(src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prenet_jax.cli",
        "preprocess",
        str(src),
        "-o",
        str(out),
        "--cpu",
        "--no-progress",
        "--batch-size",
        "32",
        "--classical",
    ]


def _check(run: int, rc: int, err: str, sig: signal.Signals, folder: Path, src: Path, before: str, shape) -> list[str]:
    """What went wrong with one run (empty: nothing)."""
    problems = []
    names = sorted(p.name for p in folder.iterdir())
    if _sha(src) != before:
        problems.append("the input changed")
    if "Traceback" in err or "Exception ignored" in err:
        problems.append("a traceback on stderr")
    if rc == 0:  # the signal came after the end: the output must be whole
        extra = [n for n in names if n not in (src.name, "out.h5") and not n.startswith("out_")]
        if "out.h5" not in names or extra:
            problems.append(f"exit 0 but the folder holds {names}")
        else:
            with h5py.File(folder / "out.h5", "r") as f:
                found = [d.shape for d in _datasets(f) if d.ndim == 4]
            if tuple(shape) not in found:
                problems.append(f"exit 0 but no 4D dataset of shape {tuple(shape)} in the output ({found})")
    elif rc == EXIT[sig]:
        if names != [src.name]:
            problems.append(f"interrupted, but the folder holds {names}")
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if not last.startswith(f"interrupted by {sig.name}"):
            problems.append(f"last line of stderr: {last!r}")
    else:
        problems.append(f"exit {rc} (expected 0 or {EXIT[sig]}): {err.strip()[-500:]}")
    return problems


def _datasets(group):
    for item in group.values():
        if isinstance(item, h5py.Dataset):
            yield item
        else:
            yield from _datasets(item)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--scan", type=int, default=16, help="scan side (frames: scan x scan)")
    ap.add_argument("--size", type=int, default=128, help="frame side in px")
    ap.add_argument("--seed", type=int, default=None, help="random delays and signals (default: a fresh seed, printed)")
    args = ap.parse_args(argv)
    seed = random.randrange(2**31) if args.seed is None else args.seed
    rng = random.Random(seed)
    import prenet_jax as pj

    cube = pj.synthetic_cube(scan=(args.scan, args.scan), shape=(args.size, args.size), radius=args.size / 6, jitter=0.7, seed=1)["cube"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        np.save(base / "in.npy", np.asarray(cube, np.float32))
        t0 = time.perf_counter()
        done = subprocess.run(_command(base / "in.npy", base / "out.h5"), env=env, capture_output=True, text=True, check=False)
        duration = time.perf_counter() - t0
        if done.returncode != 0:
            print(f"the uninterrupted run failed (exit {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        print(f"seed {seed}; one uninterrupted run of {cube.shape}: {duration:.1f} s")
        for run in range(args.runs):
            folder = Path(tmp) / f"run{run}"
            folder.mkdir()
            src = folder / "in.npy"
            np.save(src, np.asarray(cube, np.float32))
            before = _sha(src)
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            delay = rng.uniform(0.0, 1.2 * duration)
            proc = subprocess.Popen(_command(src, folder / "out.h5"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=600)
            problems = _check(run, proc.returncode, err, sig, folder, src, before, cube.shape)
            failures += bool(problems)
            if proc.returncode == 0:
                what = "finished before the signal"
            elif proc.returncode < 0:  # killed by the signal itself: no handler was installed yet
                what = f"killed by {signal.Signals(-proc.returncode).name}"
            else:
                what = err.strip().splitlines()[-1] if err.strip() else "(no message)"
            print(
                f"run {run}: {sig.name} after {delay:5.1f} s -> exit {proc.returncode}: {what}"
                + (f"  FAILED: {'; '.join(problems)}" if problems else "")
            )
    print(f"{args.runs - failures}/{args.runs} runs left the input alone and the output whole or absent")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
