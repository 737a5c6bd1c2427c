"""The py4DSTEM-compatible EMD 1.0 writer (:class:`EMDWriter`) and its reader (:func:`read_result`).

:class:`EMDWriter` writes the EMD 1.0 layout that ``py4DSTEM.read`` opens
(``emdfile`` 0.0.16 / py4DSTEM 0.14)::

    /                                   emd_group_type='file', version 1.0
    /datacube_root                      emd_group_type='root', python_class='Root'
        metadatabundle/calibration      python_class='Calibration' (of the corrected cube)
        metadatabundle/preprocessing    python_class='Metadata' (what was measured, provenance)
        datacube                        emd_group_type='array', python_class='DataCube'
            data                        (Rx, Ry, Qx, Qy), chunked, deflate-compressed
            dim0..dim3                  Rx, Ry, Qx, Qy

The file is written under a temporary name in the output's folder and renamed
when complete, so the output appears whole or not at all.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._emd import emd_dims
from ._hdf5 import _attr
from ._source import InputError, _reason, output_error

__all__ = ["EMDWriter", "check_output_path", "read_result"]

_ROOT = "datacube_root"
_CUBE = "datacube"


# ----------------------------------------------------------------------------- writer


def _emd_value(grp, key: str, v) -> None:
    """Write one metadata item the way ``emdfile.Metadata`` does (type tag in bytes)."""
    if isinstance(v, dict):
        sub = grp.create_group(key)
        sub.attrs["type"] = "dict"
        for k, x in v.items():
            _emd_value(sub, k, x)
        return
    if v is None:
        d = grp.create_dataset(key, data=b"_None")
        d.attrs["type"] = b"None"
    elif isinstance(v, str):
        d = grp.create_dataset(key, data=v.encode("utf-8"))
        d.attrs["type"] = b"string"
    elif isinstance(v, (bool, np.bool_)):
        d = grp.create_dataset(key, data=bool(v), dtype=bool)
        d.attrs["type"] = b"bool"
    elif isinstance(v, (int, np.integer)):
        d = grp.create_dataset(key, data=int(v), dtype=np.int64)
        d.attrs["type"] = b"number"
    elif isinstance(v, (float, np.floating)):
        d = grp.create_dataset(key, data=float(v), dtype=np.float64)
        d.attrs["type"] = b"number"
    elif isinstance(v, np.ndarray):
        d = grp.create_dataset(key, data=v, dtype=v.dtype)
        d.attrs["type"] = b"array"
    elif isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v) and len(v) > 0:
        sub = grp.create_group(key)
        sub.attrs["type"] = ("list_of_strings" if isinstance(v, list) else "tuple_of_strings").encode()
        sub.attrs["length"] = len(v)
        for i, s in enumerate(v):
            sub.create_dataset(str(i), data=s.encode("utf-8"))
    elif isinstance(v, (list, tuple)):
        d = grp.create_dataset(key, data=np.asarray(v, np.float64))
        d.attrs["type"] = b"list" if isinstance(v, list) else b"tuple"
    else:
        raise TypeError(f"metadata {key!r}: unsupported type {type(v).__name__}")


def _emd_metadata(bundle, name: str, python_class: str, items: dict) -> None:
    grp = bundle.create_group(name)
    grp.attrs["emd_group_type"] = "metadata"
    grp.attrs["python_class"] = python_class
    for k, v in items.items():
        _emd_value(grp, k, v)


def _shuffle(raw: np.ndarray) -> bytes:
    """HDF5's shuffle filter: byte ``k`` of every element, for k = 0..itemsize-1."""
    s = raw.dtype.itemsize
    if s == 1:
        return raw.tobytes()
    return np.ascontiguousarray(raw.reshape(-1).view(np.uint8).reshape(-1, s).T).tobytes()


class EMDWriter:
    """Write a corrected cube in py4DSTEM's EMD 1.0 layout, atomically.

    Parameters
    ----------
    path : final file name; nothing appears there until :meth:`commit`
    shape : (Rx, Ry, H, W)
    dtype : stored dtype
    overwrite : replace an existing file at ``path``
    compression : ``"gzip"`` (HDF5 deflate + shuffle, readable everywhere) or ``"none"``
    level : deflate level (1 is ~3x faster than 4 and compresses diffraction nearly as well)
    threads : chunks compressed in parallel (zlib releases the GIL; default
        ``min(8, cores)``); chunks are
        then stored with ``write_direct_chunk``, which bypasses HDF5's own
        (serial, lock-holding) filter pipeline

    Notes
    -----
    Chunks are ``(1, cc, H, W)`` with ``cc`` scan columns (about 1 MiB a chunk);
    :meth:`write_block` takes blocks whose columns are multiples of ``cc`` (or reach
    the last column), so every chunk is compressed and written exactly once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        shape: tuple[int, int, int, int],
        dtype,
        *,
        overwrite: bool = False,
        compression: str = "gzip",
        level: int = 1,
        threads: int | None = None,
    ):
        import h5py

        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if compression not in ("gzip", "none"):
            raise InputError(f"compression {compression!r}: use 'gzip' or 'none'")
        self.compression = compression
        self.level = int(level)
        check_output_path(self.path, overwrite)
        self.overwrite = overwrite
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        except OSError as e:
            raise output_error(self.path, "creating", e) from e
        os.close(fd)
        self.tmp = Path(tmp)
        self._f = None
        self._pool = None
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600; the output gets the usual mode
            threads = min(8, os.cpu_count() or 1) if threads is None else max(1, threads)
            self._pool = (
                concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="prenet-compress") if compression == "gzip" else None
            )
            self._f = h5py.File(self.tmp, "w")
            rx, ry, h, w = self.shape
            frame = h * w * self.dtype.itemsize
            self.chunk_cols = int(max(1, min(ry, (1 << 20) // max(frame, 1))))
            f = self._f
            f.attrs["emd_group_type"] = "file"
            f.attrs["version_major"] = 1
            f.attrs["version_minor"] = 0
            f.attrs["UUID"] = str(uuid.uuid4())
            from .. import __version__

            f.attrs["authoring_program"] = f"prenet-jax {__version__}"
            f.attrs["authoring_user"] = ""
            root = f.create_group(_ROOT)
            root.attrs["emd_group_type"] = "root"
            root.attrs["python_class"] = "Root"
            self._bundle = root.create_group("metadatabundle")
            self._bundle.attrs["emd_group_type"] = "metadatabundle"
            cube = root.create_group(_CUBE)
            cube.attrs["emd_group_type"] = "array"
            cube.attrs["python_class"] = "DataCube"
            self._cube = cube
            kw = dict(compression="gzip", compression_opts=self.level, shuffle=True) if compression == "gzip" else {}
            self.data = cube.create_dataset(
                "data", shape=self.shape, dtype=self.dtype, chunks=(1, self.chunk_cols, h, w), fillvalue=0, **kw
            )
            self.data.attrs["units"] = "pixel intensity"
        except OSError as e:
            self.abort()
            raise output_error(self.path, "creating", e) from e
        except BaseException:
            self.abort()
            raise
        self._done = False
        self.write_seconds = 0.0

    # -- data
    def _encode(self, chunk: np.ndarray) -> bytes:
        if self.compression == "none":
            return chunk.tobytes()
        return zlib.compress(_shuffle(chunk), self.level)

    def write_block(self, i0: int, j0: int, block: np.ndarray) -> None:
        """Store ``block`` (ri, cj, H, W) at scan rows ``i0:i0+ri``, columns ``j0:j0+cj``."""
        t0 = time.perf_counter()
        ri, cj = block.shape[:2]
        cc = self.chunk_cols
        ry = self.shape[1]
        if j0 % cc or (cj % cc and j0 + cj != ry):
            raise ValueError(f"block columns {j0}:{j0 + cj} are not aligned to the {cc}-column chunks")
        block = np.ascontiguousarray(block, self.dtype)
        pieces, offsets = [], []
        for i in range(ri):
            for jc in range(0, cj, cc):
                part = block[i, jc : jc + cc]
                if part.shape[0] < cc:  # the last chunk of a row is stored whole, zero-padded
                    part = np.concatenate([part, np.zeros((cc - part.shape[0],) + part.shape[1:], part.dtype)])
                pieces.append(part)
                offsets.append((i0 + i, j0 + jc, 0, 0))
        encoded = list(self._pool.map(self._encode, pieces)) if self._pool is not None else [self._encode(p) for p in pieces]
        for off, buf in zip(offsets, encoded):
            self._store(off, buf)
        self.write_seconds += time.perf_counter() - t0

    def _store(self, offset: tuple[int, ...], chunk: bytes) -> None:
        """One encoded chunk to the file (the one place bytes of the cube are written)."""
        self.data.id.write_direct_chunk(offset, chunk)

    def copy_rows_from(self, path: str | os.PathLike, row: int) -> int:
        """Copy the cube of another file written by an EMDWriter of the same scan
        columns, frame shape, dtype and compression (a part of the scan's rows) into
        rows ``row:`` of this one, chunk by chunk as stored: nothing is decoded or
        encoded again. Returns the bytes copied."""
        import h5py

        t0 = time.perf_counter()
        copied = 0
        with h5py.File(path, "r") as f:
            src = f[f"{_ROOT}/{_CUBE}/data"]
            if src.shape[1:] != self.shape[1:] or src.dtype != self.dtype or src.chunks != self.data.chunks:
                raise ValueError(
                    f"{path}: cube {src.shape} {src.dtype} chunks {src.chunks} does not fit {self.shape} {self.dtype} {self.data.chunks}"
                )
            if src.compression != self.data.compression:
                raise ValueError(f"{path}: compression {src.compression} differs from {self.data.compression}")
            for i in range(src.shape[0]):
                for j in range(0, src.shape[1], self.chunk_cols):
                    mask, raw = src.id.read_direct_chunk((i, j, 0, 0))
                    self.data.id.write_direct_chunk((row + i, j, 0, 0), raw, mask)
                    copied += len(raw)
        self.write_seconds += time.perf_counter() - t0
        return copied

    # -- metadata and commit
    def write_metadata(self, calibration: dict, preprocessing: dict, dims: dict | None = None) -> None:
        """py4DSTEM ``Calibration`` (of the corrected cube) and a ``preprocessing`` record."""
        cal = dict(calibration)
        cal.setdefault("_target_paths", [f"/{_CUBE}"])
        cal.setdefault("_root_treepath", "")
        _emd_metadata(self._bundle, "calibration", "Calibration", cal)
        _emd_metadata(self._bundle, "preprocessing", "Metadata", preprocessing)
        for n, (name, dim, units) in enumerate(emd_dims(cal)):  # the Q axes measured from the origin
            d = self._cube.create_dataset(f"dim{n}", data=dim)  # linear: first two values
            d.attrs["name"] = name
            d.attrs["units"] = units

    def commit(self, before_rename=None) -> Path:
        """Close the file and move it to its final name (atomically).

        ``before_rename()`` is called between closing and renaming, the last moment
        a run can still be called off (it raises): the file is then removed.
        """
        try:
            self._f.flush()
            self._f.close()
        except OSError as e:  # the last metadata and chunk index go to disk here
            raise output_error(self.path, "finishing", e) from e
        self._shutdown_pool()
        if before_rename is not None:
            before_rename()
        if self.overwrite:
            os.replace(self.tmp, self.path)
        else:
            try:  # link + unlink: fails, rather than clobbers, if the output appeared meanwhile
                os.link(self.tmp, self.path)
                os.unlink(self.tmp)
            except FileExistsError:
                self.abort()
                raise InputError(
                    f"{self.path} appeared while this run was writing; nothing was overwritten. Use --overwrite to replace it"
                ) from None
            except OSError:
                os.rename(self.tmp, self.path)
        self._done = True
        return self.path

    @property
    def done(self) -> bool:
        """True once :meth:`commit` has put the file in place."""
        return self._done

    def _shutdown_pool(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Drop everything written (the temporary file); safe to call twice."""
        try:
            f = getattr(self, "_f", None)
            if f is not None and f.id.valid:
                f.close()
        except Exception:
            pass
        self._shutdown_pool()
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._done:
            self.abort()


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse an existing output (unless ``overwrite``), a missing folder or a read-only one."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name, e.g. {path / 'preprocessed.h5'}")
    if path.exists() and not overwrite:
        raise InputError(f"output {path} exists; choose another name or pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"output folder {parent} is a file, not a folder; choose another output path")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {parent} is not writable; choose another output path")
    # access() says yes to root everywhere and knows nothing of read-only or special
    # file systems: creating a file is the only reliable test
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise InputError(f"cannot create files in the output folder {parent} ({_reason(e)}); choose another output path") from None
    os.close(fd)
    os.unlink(probe)


# ----------------------------------------------------------------------------- reading results


def read_result(path: str | os.PathLike, data: bool = False) -> dict[str, Any]:
    """Read a file written by ``prenet-jax preprocess`` with plain h5py.

    Returns
    -------
    dict with ``calibration`` and ``preprocessing`` (the metadata as Python values)
    and ``data`` (the corrected cube as numpy, only if ``data=True``).
    """
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        bundle = f[f"{_ROOT}/metadatabundle"]
        for name in ("calibration", "preprocessing"):
            out[name] = _read_emd_group(bundle[name])
        if data:
            out["data"] = f[f"{_ROOT}/{_CUBE}/data"][()]
        out["shape"] = f[f"{_ROOT}/{_CUBE}/data"].shape
    return out


def _read_emd_group(grp) -> dict:
    import h5py

    out = {}
    for k, v in grp.items():
        t = _attr(v, "type")
        if isinstance(v, h5py.Group):
            if t == "dict":
                out[k] = _read_emd_group(v)
            else:
                out[k] = [v[str(i)][()].decode() for i in range(int(v.attrs["length"]))]
            continue
        x = v[()]
        if t == "string":
            out[k] = x.decode() if isinstance(x, bytes) else str(x)
        elif t == "None":
            out[k] = None
        elif t in ("number", "bool"):
            out[k] = x.item() if hasattr(x, "item") else x
        elif t in ("list", "tuple"):
            out[k] = list(x)
        else:
            out[k] = np.asarray(x)
    return out
