"""Helpers every stage needs, written once: files that appear whole or not at all,
checksums, provenance (versions, git commit), ``(min, max)`` settings and the start
of a multi-process job."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "sha256_file", "versions", "git_commit", "min_max", "distributed_initialize"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False, fsync: bool = False) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed onto ``path`` when the block
    ends without an error, removed when it raises. Readers of ``path`` see the old
    file or the whole new one, never a part (the rename is atomic on one file system).

    With ``directory=True`` the temporary is a new directory, moved onto ``path``
    (which must not exist then). ``fsync`` flushes the file to the disk before the
    rename, so that a crash cannot leave a renamed but empty file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would leave the final file private
    try:
        yield tmp
        if fsync and not directory:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if directory:
            if path.exists():
                raise FileExistsError(f"{path} exists; remove it first")
            tmp.rename(path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if directory:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, stop=None, chunk: int = 8 << 20) -> str | None:
    """Hex SHA-256 of a file, read in ``chunk`` bytes; None if ``stop`` (a
    ``threading.Event``) is set before the end."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            if stop is not None and stop.is_set():
                return None
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def versions(*optional: str) -> dict:
    """Versions of prenet-jax, Python, numpy and jax, and of each ``optional`` module
    (None where it is not installed)."""
    import numpy as np

    from . import __version__

    out = {"prenet_jax": __version__, "python": sys.version.split()[0], "numpy": np.__version__}
    for mod in ("jax", *optional):
        try:
            out[mod.replace(".", "_")] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:  # an optional package
            out[mod.replace(".", "_")] = None
    return out


def git_commit() -> dict:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the checkout this
    package runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        if rev.returncode == 0:
            return {"git_commit": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": None, "git_dirty": None}


def min_max(x, name: str, lowest: float | None = 0.0) -> tuple[float, float]:
    """A ``(min, max)`` setting as two floats, checked: ``lowest <= min <= max < inf``
    (``lowest=None``: any finite minimum). Accepts any pair, or ``"a,b"`` text."""
    if isinstance(x, str):
        x = x.replace(" ", "").split(",")
    try:
        lo, hi = (float(v) for v in x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a (min, max) pair, got {x!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (lowest is not None and lo < lowest):
        bound = "" if lowest is None else f"{lowest} <= "
        raise ValueError(f"{name} must satisfy {bound}min <= max < inf, got ({lo}, {hi})")
    return (lo, hi)


def call_from_file(path: str | os.PathLike, function: str, *args, missing: str = ""):
    """Import the Python file ``path`` as a module of its own and return
    ``function(*args)`` from it: how configs (``get_config``) and recipes
    (``get_recipe``) are read. ``missing`` completes the error when the file does not exist."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}{missing}")
    spec = importlib.util.spec_from_file_location(f"_prenet_{function}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, function):
        raise ValueError(f"{path} defines no {function}()")
    return getattr(mod, function)(*args)


def distributed_initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, cpu_collectives: str | None = "gloo"
) -> tuple[int, int]:
    """``jax.distributed.initialize`` once per process (training and inference share it).

    Without arguments JAX finds the job from the cluster environment (SLURM, Open MPI,
    TPU pods); ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and
    ``process_id`` set it by hand. ``cpu_collectives`` (``"gloo"`` or ``"mpi"``) lets
    processes on CPUs exchange arrays. Must run before anything touches a JAX device.

    Returns ``(process_index, process_count)``.
    """
    import jax

    if not jax.distributed.is_initialized():
        if cpu_collectives:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        kw = {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
        jax.distributed.initialize(**{k: v for k, v in kw.items() if v is not None})
    return jax.process_index(), jax.process_count()


def format_rate(per_second: float) -> str:
    """A rate for people: whole numbers from 10 on, two significant digits below
    (0.3 frames/s reads ``0.3``, not ``0``)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"
