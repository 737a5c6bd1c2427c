"""Every file of RosettaSciIO's test data through ``prenet-jax``: no traceback, ever.

Issue 28's target: no traceback on any file of RosettaSciIO's test data that holds 4-D
or stacked diffraction data, and a clear ``error:`` line on the others. Each file is
opened with :func:`prenet_jax.io.open_input`; what opens (4-D, or a 3-D stack given
the scan shape it suggests) goes through ``prenet-jax preprocess`` in a subprocess,
with a time limit. Prints one line per file and a summary; exits 1 on any traceback.

Usage::

    python benchmarks/rsciio_sweep.py GIT_DIR [--limit N] [--timeout S]

``GIT_DIR`` is a RosettaSciIO git directory (``fetch github:hyperspy/rosettasciio``);
the test data are read from its ``HEAD:rsciio/tests/data`` into a temporary folder
(zip files are extracted there).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DATA = "rsciio/tests/data"
#: Files that are side-cars of another (opened through it) or not data at all.
SKIP = (".hdr", ".txt", ".md", ".py", ".json", ".csv", ".xml.bak", ".gitignore", ".log", ".png", ".jpg")


def _extract(git_dir: str, dest: Path) -> list[Path]:
    names = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "-r", "--name-only", "HEAD", DATA], capture_output=True, text=True, check=True
    ).stdout.split()
    out = []
    for n in names:
        p = dest / n[len(DATA) + 1 :]
        p.parent.mkdir(parents=True, exist_ok=True)
        blob = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{n}"], capture_output=True, check=False)
        if blob.returncode != 0:  # a link or a missing object in a partial clone: nothing to read
            continue
        p.write_bytes(blob.stdout)
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as z:
                z.extractall(p.with_suffix(""))
            out += [q for q in p.with_suffix("").rglob("*") if q.is_file()]
        else:
            out.append(p)
    return [p for p in out if not p.name.lower().endswith(SKIP)]


def _probe(path: Path) -> tuple[str, list[str]]:
    """``(status, extra CLI args)``: 'opens', 'stack' (with --scan) or the error line.
    In this process (a reader's import is paid once); anything but InputError is a bug."""
    import traceback
    import warnings

    from prenet_jax.io import InputError, open_input

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_input(path)
        return "opens", []
    except InputError as e:
        line = str(e).replace("\n", " ")
    except Exception:  # noqa: BLE001 - what this sweep looks for
        return "TRACEBACK " + traceback.format_exc().strip().splitlines()[-1][:200], []
    m = re.search(r"--scan (\d+),(\d+)\)", line)
    if m:
        return "stack", ["--scan", f"{m.group(1)},{m.group(2)}"]
    return "error: " + line[:160], []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("git_dir")
    ap.add_argument("--limit", type=int, help="at most N files")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per preprocess run")
    args = ap.parse_args(argv)
    tracebacks = ran = ok = 0
    with tempfile.TemporaryDirectory(prefix="rsciio-sweep-") as tmp:
        files = _extract(args.git_dir, Path(tmp) / "data")[: args.limit]
        for f in files:
            rel = f.relative_to(Path(tmp) / "data")
            status, extra = _probe(f)
            if status.startswith("TRACEBACK"):
                tracebacks += 1
                print(f"{rel}: open: {status}", flush=True)
                continue
            if status not in ("opens", "stack"):
                print(f"{rel}: not run: {status}", flush=True)
                continue
            out = Path(tmp) / "out" / (rel.as_posix().replace("/", "_") + ".h5")
            out.parent.mkdir(exist_ok=True)
            cmd = [sys.executable, "-m", "prenet_jax.cli", "preprocess", str(f), "-o", str(out), "--no-progress", *extra]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(f"{rel}: preprocess: over {args.timeout:g} s", flush=True)
                continue
            ran += 1
            tb = "Traceback" in p.stderr
            tracebacks += tb
            ok += p.returncode == 0
            err = [ln for ln in p.stderr.splitlines() if "error:" in ln][-1:] or [""]
            warn = sum(ln.startswith("warning:") for ln in p.stdout.splitlines())
            print(f"{rel}: preprocess rc {p.returncode}{' TRACEBACK' if tb else ''}, {warn} warning(s) {err[0][:160]}", flush=True)
    print(f"summary: {len(files)} files, {ran} preprocessed ({ok} rc 0), {tracebacks} tracebacks")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
