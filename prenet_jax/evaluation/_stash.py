"""Finished parts of an evaluation kept on disk, so that an interrupted run resumes.

The full evaluation of trained weights on 2,000 patterns takes hours on two CPU cores
(the centre table alone runs every method at five doses). Each dose of a table is a
part: when it finishes, its result goes to ``<dir>/<key>/<part>.pkl`` (written whole,
then renamed), and a rerun of the same evaluation loads it instead of computing it
again. The key is a digest of everything the numbers depend on: the evaluation's
settings, the test set's content, the networks' parameters, the methods and peers that
run, and the source of the package itself (a fix to a method changes its numbers). A
changed input or code gets a new key, so stale parts are never mixed in; the release
recipe runs from a frozen snapshot of the code, so its parts survive interruptions.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import numpy as np

__all__ = ["Stash", "evaluation_key", "no_stash"]

T = TypeVar("T")


def _update_arrays(h, arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())


def _source_digest() -> str:
    """SHA-256 of every ``.py`` file of the installed package (paths and contents)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def evaluation_key(cfg: dict, es, methods) -> str:
    """A digest of what an evaluation's numbers depend on (see the module docstring)."""
    h = hashlib.sha256()
    h.update(_source_digest().encode())
    net = methods.network
    head = {
        "config": cfg,
        "peers": methods.peers,
        "select": methods.select,
        "refine": methods.refine,
        "network": None if net is None else repr(net.config),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    _update_arrays(h, [es.single, es.scans, es.single_kind, es.scans_kind])
    if net is not None:
        _update_arrays(h, (np.asarray(x) for x in jax.tree_util.tree_leaves(net.params)))
    return h.hexdigest()[:16]


class Stash:
    """The finished parts of one evaluation (``root`` None: nothing is kept).

    Parameters
    ----------
    root : the directory that holds the parts of every evaluation run into it
    key : :func:`evaluation_key` of this evaluation
    log : where a reused part is reported
    """

    def __init__(self, root: str | os.PathLike | None, key: str, log: Callable = print):
        self.dir = None if root is None else Path(root) / key
        self.log = log
        self.reused = 0

    def part(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()``, or the value it returned in an earlier run of this evaluation."""
        if self.dir is None:
            return fn()
        path = self.dir / f"{name}.pkl"
        if path.exists():
            with open(path, "rb") as f:
                value = pickle.load(f)
            self.reused += 1
            self.log(f"  {name}: finished in an earlier run (kept in {self.dir})")
            return value
        value = fn()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        return value

    def clear(self) -> None:
        """Forget this evaluation's parts (once its report is written)."""
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir)
            try:
                self.dir.parent.rmdir()  # only when no other evaluation's parts are there
            except OSError:
                pass


def no_stash() -> Stash:
    """A stash that keeps nothing."""
    return Stash(None, "")
