"""The simulated data set on disk: shards (:func:`write_shard`, :func:`read_shard`), the
manifest (:func:`read_manifest`), and random access for training (:class:`PatternStore`)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .._util import atomic_path, atomic_write_text
from . import _structures as structures_mod
from ._sim_config import FORMAT, FORMAT_VERSION, PATTERNS

__all__ = ["PatternStore", "read_manifest", "read_shard", "round_mantissa", "write_shard"]


# --------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------


def _shard_path(root: Path, dataset: str, shard: int) -> Path:
    return root / dataset / f"shard-{shard:05d}.h5"


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (nearest; relative error <= 2^-(bits+1))."""
    x = np.ascontiguousarray(x, np.float32)
    drop = 23 - int(bits)
    if drop <= 0:
        return x
    u = x.view(np.uint32)
    u = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return u.view(np.float32)


def write_shard(path: str | os.PathLike, data: dict, attrs: dict | None = None, compression: int = 4, mantissa_bits: int = 23) -> Path:
    """Write a shard atomically (temporary name, fsync, rename): it is whole or absent.

    ``mantissa_bits < 23`` rounds the patterns first (see ``SimulationConfig.mantissa_bits``).
    """
    import h5py

    path = Path(path)
    pats = round_mantissa(np.asarray(data["patterns"], np.float32), mantissa_bits)
    n, h, w = pats.shape
    with atomic_path(path, fsync=True) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("patterns", data=pats, chunks=(1, h, w), compression="gzip", compression_opts=compression, shuffle=True)
        g = f.create_group("meta")
        for k, v in data["meta"].items():
            v = np.asarray(v)
            if v.dtype.kind in "UO":
                g.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(k, data=v)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["n_patterns"] = n
        f.attrs["mantissa_bits"] = int(mantissa_bits)
        f.attrs["zero_angle_convention"] = (
            "zero angle (optical axis) at meta/zero_angle = (S/2, S/2) in (row, col); the geometric "
            "centre is ((S-1)/2, (S-1)/2); intensities are fractions of the incident electrons"
        )
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def read_shard(path: str | os.PathLike, patterns: bool = True) -> dict:
    """Read a shard back: ``{"patterns": (N, S, S) float32 or None, "meta": {...}, "attrs": {...}}``."""
    import h5py

    with h5py.File(path, "r") as f:
        meta = {}
        for k, ds in f["meta"].items():
            v = ds[()]
            if ds.dtype.kind == "O":
                v = np.asarray([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
            meta[k] = v
        return {
            "patterns": f["patterns"][()] if patterns else None,
            "meta": meta,
            "attrs": dict(f.attrs),
        }


def _shard_ok(path: Path, expected: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and int(f.attrs["n_patterns"]) == expected == f["patterns"].shape[0]
    except Exception:  # unreadable: recompute it
        return False


# --------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------

_MANIFEST_COLUMNS = (
    "uid",
    "dataset",
    "shard",
    "index",
    "structure_id",
    "source",
    "kind",
    "formula",
    "spacegroup",
    "split",
    "task",
    "energy_ev",
    "wavelength_a",
    "semiangle_mrad",
    "disk_radius_px",
    "extent_a",
    "reciprocal_pixel_inv_a",
    "angular_pixel_mrad",
    "thickness_a",
    "orientation",
    "zone_axis",
    "mistilt_mrad",
    "defocus_a",
    "frozen_phonons",
    "n_atoms",
    "probe_position_a",
    "zero_angle",
    "disk_com",
    "total_intensity",
    "n_averaged",
    "gpts",
)


def _fmt(v) -> str:
    if isinstance(v, (np.ndarray, list, tuple)):
        return " ".join(_fmt(x) for x in np.asarray(v).ravel())
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else "nan"
    return str(v)


def _manifest_rows(root: Path, dataset: str, shard: int, meta: dict) -> list[dict]:
    n = len(meta["uid"])
    rel = str(_shard_path(Path("."), dataset, shard))
    rows = []
    for i in range(n):
        row = {"uid": meta["uid"][i], "dataset": dataset, "shard": rel, "index": i}
        for c in _MANIFEST_COLUMNS[4:]:
            row[c] = _fmt(meta[c][i])
        rows.append(row)
    return rows


def _write_manifest(root: Path, rows_by_shard: dict) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_MANIFEST_COLUMNS), lineterminator="\n")
    w.writeheader()
    for key in sorted(rows_by_shard):
        w.writerows(rows_by_shard[key])
    atomic_write_text(root / "manifest.csv", buf.getvalue())


def _write_structures(root: Path, ids: Sequence[str], fractions, rows_by_shard: dict) -> None:
    import io

    info: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for rows in rows_by_shard.values():
        for r in rows:
            info.setdefault(r["structure_id"], r)
            counts[r["structure_id"]] = counts.get(r["structure_id"], 0) + 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["structure_id", "source", "kind", "formula", "spacegroup", "split", "n_patterns"])
    for sid in ids:
        r = info.get(sid, {})
        kind = r.get("kind", "amorphous" if sid.startswith("amorphous:") else "crystal")
        w.writerow(
            [
                sid,
                sid.partition(":")[0],
                kind,
                r.get("formula", ""),
                r.get("spacegroup", ""),
                structures_mod.split_of(sid, fractions),
                counts.get(sid, 0),
            ]
        )
    atomic_write_text(root / "structures.csv", buf.getvalue())


def read_manifest(root: str | os.PathLike, dataset: str | None = None, split: str | None = None) -> list[dict]:
    """Rows of ``manifest.csv`` (strings), optionally one data set and one split."""
    path = Path(root) / "manifest.csv"
    if not path.exists():
        raise ValueError(f"{path} does not exist: run `prenet-jax simulate --output {root}` first")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if (dataset is None or r["dataset"] == dataset) and (split is None or r["split"] == split)]


# --------------------------------------------------------------------------------------
# reading for training
# --------------------------------------------------------------------------------------


class PatternStore:
    """Random access to a simulated data set by split, for training loops.

    Parameters
    ----------
    root : directory written by :func:`run_simulation`
    dataset : "patterns" or "ellipse"
    split : "train", "val", "test" or None (all)

    Attributes
    ----------
    rows : list of manifest rows (dicts of strings)
    """

    def __init__(self, root: str | os.PathLike, dataset: str = PATTERNS, split: str | None = "train"):
        self.root = Path(root)
        self.rows = read_manifest(self.root, dataset, split)
        if not self.rows:
            raise ValueError(f"no {dataset} patterns of split {split!r} in {self.root}/manifest.csv")
        self._files: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, rel: str):
        import h5py

        f = self._files.get(rel)
        if f is None:
            f = self._files[rel] = h5py.File(self.root / rel, "r")
        return f

    def get(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(patterns (B, S, S) float32, zero_angle (B, 2) float32)`` of manifest rows ``indices``."""
        indices = np.asarray(list(indices), dtype=np.int64)
        rows = [self.rows[i] for i in indices]
        size = self._file(rows[0]["shard"])["patterns"].shape[1:] if rows else (0, 0)
        out = np.empty((len(rows),) + tuple(size), np.float32)
        # One read per shard with increasing indices (what h5py's fancy indexing requires).
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for k, r in enumerate(rows):
            by_shard.setdefault(r["shard"], []).append((int(r["index"]), k))
        for shard, pairs in by_shard.items():
            pairs.sort()
            idx = [i for i, _ in pairs]
            uniq, inverse = np.unique(idx, return_inverse=True)
            block = self._file(shard)["patterns"][uniq.tolist()]
            out[[k for _, k in pairs]] = block[inverse]
        zeros = np.asarray([[float(x) for x in r["zero_angle"].split()] for r in rows], np.float32).reshape(-1, 2)
        return out, zeros

    def batches(self, batch_size: int, seed: int = 0, epochs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled batches (a new permutation each epoch; ``epochs=None`` repeats forever)."""
        rng = np.random.default_rng(seed)
        e = 0
        while epochs is None or e < epochs:
            order = rng.permutation(len(self))
            for s in range(0, len(order) - batch_size + 1, batch_size):
                yield self.get(order[s : s + batch_size])
            e += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
