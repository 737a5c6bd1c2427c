"""Training data: clean patterns by structure split and the data order (each task's
on-device batch is built in ``training/tasks/<stage>.py``).

Host side
---------
:func:`load_split` returns the clean, centred, undistorted patterns of one split
(``"train"``, ``"val"`` or ``"test"``) with their zero-angle positions. Two sources:

- ``"synthetic"``: analytic disk patterns (:func:`prenet_jax.disk_pattern`), one random
  reciprocal lattice per "structure"; for CPU tests and the tiny configurations.
- ``"simulated"``: the abTEM data set of :mod:`prenet_jax.data._simulate`. Only
  :func:`_read_simulated` touches that module's reader, so a change there is one edit here.

Splits are by structure (``_structures.split_of`` of the structure id), never by
pattern: no structure seen in training is used for validation or testing.

The order of the data is a pure function of ``(seed, step)`` (:func:`batch_indices`), so
a run resumed from a checkpoint at step ``s`` sees exactly the batches an uninterrupted
run would have seen.

Device side
-----------
The clean patterns travel to the device; everything random (shift, ellipse, rotation,
dose, noise) is drawn there by :mod:`prenet_jax.corruption` from a key derived from
``(seed, step)``, inside the jitted training step, by the task's batch function.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._util import atomic_path
from ..corruption import distort
from ..data import disk_pattern

__all__ = ["DataConfig", "Split", "load_split", "batch_indices", "rotation_average", "cached_rotation_average"]

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the clean patterns come from.

    Attributes
    ----------
    source : ``"synthetic"`` (analytic disk patterns) or ``"simulated"`` (abTEM shards).
    root : directory of a simulated data set (``prenet-jax simulate --output``).
    dataset : ``"patterns"`` or ``"ellipse"`` (simulated only: the averaged patterns).
    max_patterns : cap on the patterns loaded per split (host memory: 256 KiB each at 256 px).
    size : side of the synthetic patterns (px).
    n_structures : synthetic structures (one random lattice each).
    patterns_per_structure : synthetic variants per structure (disk radius, Bragg
        intensity and edge sharpness vary, the lattice does not).
    radius_range : direct-disk radius of synthetic patterns (px).
    split_fractions : (train, val, test) fractions of the structures.
    seed : seed of the synthetic content (not of the training order).
    rotation_average : the ellipse task averages each clean pattern over this many
        in-plane rotations about its zero angle (rings, like the mean of a
        polycrystalline scan); 0 uses the patterns as they are (the simulated
        ``"ellipse"`` data set is already averaged).
    crop : keep only this many px around each pattern's zero angle (whole pixels, so
        the zero angle keeps its sub-pixel position); None keeps whole patterns.
    """

    source: Literal["synthetic", "simulated"] = "synthetic"
    root: str | None = None
    dataset: Literal["patterns", "ellipse"] = "patterns"
    max_patterns: int | None = None
    size: int = 32
    n_structures: int = 64
    patterns_per_structure: int = 4
    radius_range: tuple[float, float] = (3.0, 5.0)
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    rotation_average: int = 16
    crop: int | None = None

    def __post_init__(self):
        if self.source not in ("synthetic", "simulated"):
            raise ValueError(f"data source {self.source!r}: use 'synthetic' or 'simulated'")
        if self.source == "simulated" and not self.root:
            raise ValueError("the simulated source needs data.root (the directory written by `prenet-jax simulate`)")
        if self.dataset not in ("patterns", "ellipse"):
            raise ValueError(f"dataset {self.dataset!r}: use 'patterns' or 'ellipse'")
        if self.rotation_average < 0:
            raise ValueError("rotation_average must be >= 0")
        if self.crop is not None and self.crop < 8:
            raise ValueError(f"crop={self.crop}: give at least 8 px, or None for whole patterns")


class Split(NamedTuple):
    """Clean patterns of one split.

    clean : (N, S, S) float32, fractions of the incident electrons per pixel
    zero_angle : (N, 2) float32, (row, col) of the zero angle
    structure : (N,) str, the structure each pattern comes from
    """

    clean: np.ndarray
    zero_angle: np.ndarray
    structure: np.ndarray


# ----------------------------------------------------------------------------- host side


def _split_of(structure_id: str, fractions) -> str:
    from ..data import split_of

    return split_of(structure_id, tuple(fractions))


def _synthetic_structure(cfg: DataConfig, i: int) -> tuple[str, np.ndarray]:
    """Id and reciprocal lattice (two vectors in units of the disk radius) of structure ``i``."""
    rng = np.random.default_rng([cfg.seed, 7, i])
    a, b = rng.uniform(2.0, 3.2, size=2)
    phi = rng.uniform(0, 2 * math.pi)  # orientation
    gamma = rng.uniform(math.radians(60), math.radians(120))  # angle between the vectors
    g1 = a * np.array([math.sin(phi), math.cos(phi)])
    g2 = b * np.array([math.sin(phi + gamma), math.cos(phi + gamma)])
    return f"synthetic:{cfg.seed}:{i}", np.stack([g1, g2])


def _load_synthetic(cfg: DataConfig, split: str) -> Split:
    s = cfg.size
    zero = (s / 2.0, s / 2.0)  # the abTEM convention: half a pixel off the geometric centre
    pats, ids = [], []
    for i in range(cfg.n_structures):
        sid, lattice = _synthetic_structure(cfg, i)
        if _split_of(sid, cfg.split_fractions) != split:
            continue
        rng = np.random.default_rng([cfg.seed, 11, i])
        for _ in range(cfg.patterns_per_structure):
            radius = float(np.exp(rng.uniform(*np.log(cfg.radius_range))))
            p = disk_pattern(
                (s, s),
                zero,
                radius,
                None,
                tuple(map(tuple, lattice)),
                orders=2,
                bragg_intensity=float(rng.uniform(0.05, 0.4)),
                edge=float(rng.uniform(0.5, 1.0)),
            )
            pats.append(p / p.sum(dtype=np.float64))  # fractions of the incident electrons
            ids.append(sid)
    if not pats:
        raise ValueError(f"no synthetic structure falls in split {split!r}: raise data.n_structures")
    clean = np.stack(pats).astype(np.float32)
    return Split(clean, np.broadcast_to(np.float32(zero), (len(pats), 2)).copy(), np.asarray(ids))


def _read_simulated(root: str, dataset: str, split: str, max_patterns: int | None) -> Split:
    """The one function that reads the abTEM data set (``prenet_jax.data.PatternStore``)."""
    from ..data import PatternStore

    store = PatternStore(root, dataset=dataset, split=split)
    try:
        n = len(store) if max_patterns is None else min(len(store), int(max_patterns))
        clean, zero = store.get(range(n))
        ids = np.asarray([r["structure_id"] for r in store.rows[:n]])
    finally:
        store.close()
    return Split(clean.astype(np.float32), zero.astype(np.float32), ids)


def crop_about_zero(s: Split, size: int) -> Split:
    """``size`` x ``size`` crops of every pattern around its zero angle (zero-padded)."""
    n, h, w = s.clean.shape
    origin = np.round(s.zero_angle - size / 2.0).astype(np.int64)
    padded = np.pad(s.clean, ((0, 0), (size, size), (size, size)))
    clean = np.stack([padded[i, o[0] + size : o[0] + 2 * size, o[1] + size : o[1] + 2 * size] for i, o in enumerate(origin)])
    return Split(clean, (s.zero_angle - origin).astype(np.float32), s.structure)


def load_split(cfg: DataConfig, split: str) -> Split:
    """The clean patterns of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if cfg.source == "synthetic":
        out = _load_synthetic(cfg, split)
        if cfg.max_patterns is not None:
            out = Split(*(a[: cfg.max_patterns] for a in out))
    else:
        out = _read_simulated(cfg.root, cfg.dataset, split, cfg.max_patterns)
    return crop_about_zero(out, cfg.crop) if cfg.crop is not None else out


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Indices of the patterns of global batch ``step``: epochs of fresh permutations.

    A pure function of ``(seed, step)``: sample ``k = step * batch + j`` is element
    ``k mod n`` of the permutation of epoch ``k // n``, drawn from ``(seed, epoch)``.
    """
    if n < 1:
        raise ValueError("no patterns to draw from")
    k = step * batch + np.arange(batch, dtype=np.int64)
    epochs, pos = np.divmod(k, n)
    out = np.empty(batch, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        m = epochs == e
        out[m] = perm[pos[m]]
    return out


@jax.jit
def _rotation_average_chunk(clean, zero, angles):
    def one(a):
        b = clean.shape[0]
        out, _ = distort(clean, zero, jnp.zeros((b, 2)), jnp.ones(b), jnp.zeros(b), jnp.full(b, a), "cubic")
        return jnp.maximum(out, 0.0)

    return jax.lax.map(one, angles).mean(0)


def rotation_average(clean: np.ndarray, zero_angle: np.ndarray, n: int, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """``(N, S, S)`` -> the mean of ``n`` in-plane rotations of each pattern about its zero
    angle (a random offset per call, so ring patterns keep no preferred direction)."""
    if n <= 1:
        return clean
    offset = np.random.default_rng(seed).uniform(0, 2 * math.pi)
    angles = jnp.asarray(offset + 2 * math.pi * np.arange(n) / n, jnp.float32)
    outs = [
        np.asarray(_rotation_average_chunk(jnp.asarray(clean[i : i + chunk]), jnp.asarray(zero_angle[i : i + chunk]), angles))
        for i in range(0, clean.shape[0], chunk)
    ]
    return np.concatenate(outs).astype(np.float32)


def cached_rotation_average(cfg: DataConfig, split: str, clean: np.ndarray, zero_angle: np.ndarray) -> np.ndarray:
    """:func:`rotation_average` of a split, computed once per data set and kept in
    ``<root>/derived/`` for simulated data (a resumed run does not redo it)."""
    seed = cfg.seed + {"train": 0, "val": 1, "test": 2}[split]
    if cfg.source != "simulated":
        return rotation_average(clean, zero_angle, cfg.rotation_average, seed=seed)
    name = f"rotation_average-{cfg.dataset}-{split}-n{cfg.rotation_average}-seed{seed}-crop{cfg.crop}-max{cfg.max_patterns}-count{len(clean)}.npy"
    path = Path(cfg.root) / "derived" / name
    if path.exists():
        out = np.load(path, mmap_mode="r")
        if out.shape == clean.shape:
            return np.asarray(out)
    out = rotation_average(clean, zero_angle, cfg.rotation_average, seed=seed)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the name
        np.save(f, out)
    return out
