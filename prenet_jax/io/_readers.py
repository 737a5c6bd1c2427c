"""Reading 4D-STEM files lazily and writing py4DSTEM-compatible (EMD 1.0) results.

Readers
-------
:func:`open_input` returns a :class:`Source`: the cube's shape ``(Rx, Ry, H, W)``,
dtype and storage chunking, and reads of rectangular scan blocks or of sampled
frames, so no more than one block is ever in host memory. Files are opened
read-only.

- HDF5 (any extension): py4DSTEM/EMD 1.0 files are recognised by their header and
  their one ``DataCube`` is picked; otherwise the one 4-D dataset in the file, or
  the dataset named by ``dataset``.
- ``.npy``: read with positioned reads at the array's offset (no memory map: the
  pages of a map stay in the process's resident memory once touched, so a map
  of a cube larger than memory looks like a cube in memory).
- Detector formats (``.mib``, ``.blo``, ``.dm4``, EMPAD ``.xml``, ``.mrc``, ...)
  through RosettaSciIO, lazily (dask), if the ``io`` extra is installed.

A 3-D stack of frames ``(N, H, W)`` becomes a cube with ``scan=(Rx, Ry)``.

Writer
------
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
import errno
import math
import os
import re
import tempfile
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._util import sha256_file  # re-exported: prenet_jax.io.sha256_file
from ._emd import emd_dims

__all__ = [
    "InputError",
    "OutputError",
    "output_error",
    "negative_error",
    "Source",
    "open_input",
    "sha256_file",
    "EMDWriter",
    "read_result",
    "plan_blocks",
    "HDF5_SUFFIXES",
]

#: Extensions read with h5py (files whose first bytes say HDF5 are read with h5py too).
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".py4dstem", ".hspy", ".nxs")
_ROOT = "datacube_root"
_CUBE = "datacube"


class InputError(ValueError):
    """A problem with the user's input or options: the message names it and the fix.

    The command line prints it without a traceback and exits with status 2.
    """


class OutputError(OSError):
    """Writing the output failed (disk full, folder not writable, ...): the message
    names the file, the reason and the fix. Nothing is left behind.

    The command line prints it without a traceback and exits with status 1.
    """


def _reason(e: BaseException) -> str:
    """The short reason of an OS error (``No space left on device``), else its text."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _errno(e: BaseException) -> int | None:
    """The errno of an OS error, also when HDF5 only wrote it into its message."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    m = re.search(r"errno = (\d+)", str(e))
    return int(m.group(1)) if m else None


_OUTPUT_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or process allows: write elsewhere",
    errno.EACCES: "choose a writable output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
}


def output_error(path: Path, what: str, e: BaseException) -> OutputError:
    """An :class:`OutputError` for a failed write of ``path``: the reason and the fix."""
    code = _errno(e)
    reason = os.strerror(code) if code else _reason(e)
    hint = _OUTPUT_HINTS.get(code, "check the output folder") if code else "check the output folder"
    err = OutputError(f"{what} {path} failed: {reason}; {hint}. Nothing was written")
    err.errno = code
    return err


def negative_error(what: str, minimum: float) -> InputError:
    """The :class:`InputError` for negative pixels under ``negative="error"``: what has
    them, how negative, and the fix."""
    return InputError(
        f"{what} has negative pixels (min {minimum:.4g}); use --negative clip to treat them as zero counts (dark-subtracted data)"
    )


# ----------------------------------------------------------------------------- sources


class Source:
    """A lazily read 4D-STEM cube ``(Rx, Ry, H, W)``.

    Attributes
    ----------
    path : the file
    dataset : path of the dataset inside the file (HDF5), else None
    kind : ``"emd"`` (py4DSTEM EMD 1.0), ``"hdf5"``, ``"npy"`` or ``"rsciio:<plugin>"``
    shape : (Rx, Ry, H, W)
    dtype : numpy dtype of the stored values
    scan_chunks : (cr, cc) scan positions per storage chunk; reads aligned to them
        decompress every chunk once. ``(1, Ry)`` for contiguous storage.
    calibration : pixel sizes and units carried over from the input
        (``Q_pixel_size``, ``Q_pixel_units``, ``R_pixel_size``, ``R_pixel_units``)
    notes : remarks for the user (e.g. the input was already preprocessed)

    Every read checks that the file has not changed since it was opened (size,
    modification time, inode): a file still being written or copied would give a
    result mixing two versions. Reads that fail raise :class:`InputError`.
    """

    kind = "?"

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, scan: tuple[int, int] | None):
        self.path = Path(path)
        self.dataset: str | None = getattr(self, "dataset", None)
        self.calibration: dict[str, Any] = {}
        self.notes: list[str] = []
        self.stored_shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._stack = False  # stored as (N, H, W), viewed as (Rx, Ry, H, W)
        shape = _squeeze_leading(self.stored_shape)
        self._lead = len(self.stored_shape) - len(shape)  # leading singleton axes
        if len(shape) == 3 and scan is not None:
            n = shape[0]
            if scan[0] * scan[1] != n:
                raise InputError(
                    f"--scan {scan[0]},{scan[1]} gives {scan[0] * scan[1]} positions but {self._what()} holds {n} frames; pick RX,RY with RX*RY = {n}"
                )
            shape = (scan[0], scan[1]) + shape[1:]
            self._stack = True
        elif scan is not None and len(shape) == 4 and tuple(scan) != shape[:2]:
            raise InputError(
                f"--scan {scan[0]},{scan[1]} does not match the scan shape {shape[:2]} of {self._what()}; leave --scan out for 4-D data"
            )
        if len(shape) != 4:
            hint = (
                f"it looks like a stack of {shape[0]} frames: give the scan shape with --scan RX,RY"
                if len(shape) == 3
                else "point --dataset at the 4-D (Rx, Ry, Qx, Qy) diffraction data"
            )
            raise InputError(
                f"{self._what()} has shape {self.stored_shape} ({len(self.stored_shape)}-D); preprocess needs 4-D data (Rx, Ry, Qx, Qy): {hint}"
            )
        if self.dtype.kind not in "iuf":
            raise InputError(f"{self._what()} has dtype {self.dtype}; expected integer or float counts")
        if 0 in shape:
            raise InputError(f"{self._what()} is empty (shape {self.stored_shape})")
        self.shape: tuple[int, int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.scan_chunks: tuple[int, int] = (1, self.shape[1])
        self._fingerprint = _fingerprint(self.path)

    # -- the file must not change while it is read
    def check_unchanged(self) -> None:
        """Raise :class:`InputError` if the file's size, modification time or inode
        differ from when it was opened."""
        now = _fingerprint(self.path)
        if now == self._fingerprint:
            return
        (s0, m0, _), (s1, m1, _) = self._fingerprint, now
        what = []
        if s1 != s0:
            what.append(f"size {s0} -> {s1} bytes")
        if m1 != m0:
            what.append("modification time changed")
        if not what:
            what.append("replaced by another file")
        raise InputError(
            f"{self._what()} changed while it was being read ({', '.join(what)}); is it still being written or copied? "
            "Wait until it is complete, then run again"
        )

    # -- description
    def _what(self) -> str:
        return f"{self.path}" + (f":{self.dataset}" if getattr(self, "dataset", None) else "")

    def describe(self) -> str:
        rx, ry, h, w = self.shape
        src = f"{self.path.name}" + (f":{self.dataset}" if self.dataset else "")
        return f"{src} ({self.kind}): scan {rx}x{ry}, frames {h}x{w} {self.dtype}"

    @property
    def n_frames(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def frame_bytes(self) -> int:
        return self.shape[2] * self.shape[3] * self.dtype.itemsize

    # -- reads
    def read_block(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        """Frames of scan rows ``i0:i1`` and columns ``j0:j1``: ``(i1-i0, j1-j0, H, W)``."""
        return self._checked(f"scan rows {i0}:{i1}, columns {j0}:{j1}", self._read_block, i0, i1, j0, j1)

    def read_frames(self, index: np.ndarray) -> np.ndarray:
        """Frames at sorted, unique flat indices (row-major over the scan): ``(n, H, W)``."""
        index = np.asarray(index, np.int64)
        where = f"{index.size} frames from index {int(index[0])}" if index.size else "no frames"
        return self._checked(where, self._read_frames, index)

    def _checked(self, where: str, read, *args) -> np.ndarray:
        """Run a backend read: its failure becomes an :class:`InputError` naming the
        place; a file that changed meanwhile is refused."""
        try:
            out = read(*args)
        except Exception as e:
            self.check_unchanged()  # a file changing under us explains the failure better
            if isinstance(e, InputError):
                raise
            raise InputError(f"reading {where} of {self._what()} failed: {_reason(e)}; is the file damaged or truncated?") from e
        self.check_unchanged()
        return out

    def _read_block(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        rx, ry, h, w = self.shape
        if self._stack:
            if j0 != 0 or j1 != ry:
                out = np.empty((i1 - i0, j1 - j0, h, w), self.dtype)
                for k, i in enumerate(range(i0, i1)):
                    out[k] = self._read_flat(i * ry + j0, i * ry + j1)
                return out
            return self._read_flat(i0 * ry, i1 * ry).reshape(i1 - i0, ry, h, w)
        return self._read_4d(i0, i1, j0, j1)

    def _read_frames(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size,) + self.shape[2:], self.dtype)
        ry = self.shape[1]
        if self._stack:
            for a, b in _runs(index):
                out[a:b] = self._read_flat(int(index[a]), int(index[b - 1]) + 1)
            return out
        rows = index // ry
        pos = 0
        for i in np.unique(rows):
            js = index[rows == i] - i * ry
            out[pos : pos + js.size] = self._read_row_cols(int(i), js)
            pos += js.size
        return out

    def frames(self) -> FrameView:
        """An ``(N, H, W)`` view for :meth:`prenet_jax.Pipeline.calibrate`."""
        return FrameView(self)

    # -- backend hooks
    def _read_4d(self, i0, i1, j0, j1) -> np.ndarray:
        raise NotImplementedError

    def _read_row_cols(self, i: int, js: np.ndarray) -> np.ndarray:
        return np.stack([self._read_4d(i, i + 1, int(j), int(j) + 1)[0, 0] for j in js])

    def _read_flat(self, a: int, b: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fingerprint(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _squeeze_leading(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop leading singleton axes beyond 4-D (e.g. ``(1, Rx, Ry, H, W)``)."""
    shape = tuple(shape)
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _runs(index: np.ndarray) -> list[tuple[int, int]]:
    """Positions ``[a, b)`` of runs of consecutive values in a sorted index."""
    if index.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    edges = np.concatenate([[0], breaks, [index.size]])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class FrameView:
    """``(N, H, W)`` array-like over a :class:`Source` (slices and sorted index arrays).

    ``on_read(n)`` is called after each read (progress reporting); ``sanitize``
    replaces frames holding NaN/Inf by zeros, which the pipeline then excludes
    from averages as empty frames.
    """

    def __init__(self, source: Source, on_read=None, sanitize: bool = True, negative: str = "clip"):
        self.source = source
        self.shape = (source.n_frames,) + source.shape[2:]
        self.dtype = source.dtype
        self.ndim = 3
        self.on_read = on_read
        self.sanitize = sanitize
        self.negative = negative

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            index = np.arange(*key.indices(self.shape[0]))
        else:
            index = np.asarray(key)
            if index.ndim != 1 or index.dtype.kind not in "iu":
                raise TypeError("FrameView takes a slice or a 1-D integer index")
        out = self.source.read_frames(index)
        if self.sanitize and out.dtype.kind == "f":
            bad = ~np.isfinite(out).all(axis=(1, 2))
            out[bad] = 0
        if self.negative == "error" and out.dtype.kind in "if" and out.size and out.min() < 0:
            raise negative_error(self.source._what(), float(out.min()))
        if self.on_read is not None:
            self.on_read(len(index))
        return out

    def __array__(self, dtype=None, copy=None):  # only for small cubes: reads everything
        a = self[:]
        return a.astype(dtype) if dtype is not None else a


class _HDF5Source(Source):
    def __init__(self, path: Path, f, ds, kind: str, scan):
        self._f = f
        self._ds = ds
        self.dataset = ds.name
        self.kind = kind
        super().__init__(path, ds.shape, ds.dtype, scan)
        self.dataset = ds.name
        if ds.chunks is not None and not self._stack:
            ch = ds.chunks[self._lead :]
            self.scan_chunks = (int(ch[0]), int(ch[1]))

    def _sel(self, *idx):
        return (0,) * self._lead + idx

    def _read_4d(self, i0, i1, j0, j1):
        return np.asarray(self._ds[self._sel(slice(i0, i1), slice(j0, j1))])

    def _read_row_cols(self, i, js):
        # h5py point selection along one axis: only the chunks holding these frames are read.
        return np.asarray(self._ds[self._sel(i, list(int(j) for j in js))])

    def _read_flat(self, a, b):
        return np.asarray(self._ds[self._sel(slice(a, b))])

    def close(self):
        try:
            self._f.close()
        except Exception:
            pass


def _npy_header(path: Path, fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from a ``.npy`` header; ``fh`` is left at the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fh)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fh)
        # 3.0 (utf-8 field names) has no public header reader: let numpy parse it
        m = np.load(path, mmap_mode="r", allow_pickle=False)
        fh.seek(int(m.offset))
        return m.shape, bool(m.ndim > 1 and m.flags.f_contiguous and not m.flags.c_contiguous), m.dtype
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise InputError(f"{path} is not a readable .npy file ({type(e).__name__}: {e}); write it with numpy.save") from None


class _NpySource(Source):
    kind = "npy"

    def __init__(self, path: Path, scan):
        self._fh = open(path, "rb")
        try:
            shape, fortran, dtype = _npy_header(path, self._fh)
            self._offset = self._fh.tell()
            if dtype.hasobject:
                raise InputError(f"{path} holds Python objects, not numbers")
            super().__init__(path, shape, dtype, scan)
            if fortran and len(shape) > 1:
                raise InputError(f"{path} is stored in Fortran order; re-save it C-ordered: np.save(path, np.ascontiguousarray(a))")
            need = self._offset + math.prod(self.stored_shape) * self.dtype.itemsize
            have = os.fstat(self._fh.fileno()).st_size
            if have < need:
                raise InputError(
                    f"{path} is truncated: its header promises {need} bytes ({self.stored_shape} {self.dtype}) but the file holds {have}; "
                    "was the copy interrupted or is it still being written?"
                )
        except BaseException:
            self._fh.close()
            raise
        self._fd = self._fh.fileno()

    def _pread(self, first_frame: int, n_frames: int) -> np.ndarray:
        nbytes = n_frames * self.frame_bytes
        buf = bytearray(nbytes)
        view = memoryview(buf)
        pos, off = 0, self._offset + first_frame * self.frame_bytes
        while pos < nbytes:  # pread may return less than asked
            got = os.preadv(self._fd, [view[pos:]], off + pos)
            if got <= 0:
                raise InputError(f"{self.path} is shorter than its header says (truncated file?)")
            pos += got
        return np.frombuffer(buf, self.dtype).reshape((n_frames,) + self.shape[2:])

    def _read_4d(self, i0, i1, j0, j1):
        ry = self.shape[1]
        if j0 == 0 and j1 == ry:
            return self._pread(i0 * ry, (i1 - i0) * ry).reshape((i1 - i0, ry) + self.shape[2:])
        return np.stack([self._pread(i * ry + j0, j1 - j0) for i in range(i0, i1)])

    def _read_row_cols(self, i, js):
        ry = self.shape[1]
        return np.concatenate([self._pread(i * ry + int(js[a]), b - a) for a, b in _runs(js)])

    def _read_flat(self, a, b):
        return self._pread(a, b - a)

    def close(self):
        self._fh.close()


class _DaskSource(Source):
    def __init__(self, path: Path, data, kind: str, scan, calibration: dict):
        self._data = data
        self.kind = kind
        super().__init__(path, data.shape, data.dtype, scan)
        # a stack's navigation axis is not the scan: keep only the detector calibration
        self.calibration = {k: v for k, v in calibration.items() if not (self._stack and k.startswith("R_"))}
        chunks = getattr(data, "chunks", None)
        if chunks is not None and not self._stack and isinstance(chunks[0], tuple):
            ch = chunks[self._lead :]
            self.scan_chunks = (int(ch[0][0]), int(ch[1][0]))

    def _sel(self, *idx):
        return (0,) * self._lead + idx

    @staticmethod
    def _get(x) -> np.ndarray:
        return np.asarray(x.compute() if hasattr(x, "compute") else x)

    def _read_4d(self, i0, i1, j0, j1):
        return self._get(self._data[self._sel(slice(i0, i1), slice(j0, j1))])

    def _read_row_cols(self, i, js):
        return self._get(self._data[self._sel(i)][np.asarray(js)])

    def _read_flat(self, a, b):
        return self._get(self._data[self._sel(slice(a, b))])


# ----------------------------------------------------------------------------- opening


def _check_readable(path: Path) -> None:
    if not path.exists():
        near = ""
        if path.parent.is_dir():
            similar = sorted(p.name for p in path.parent.iterdir() if p.stem.lower() == path.stem.lower())[:3]
            near = f" (similar: {', '.join(similar)})" if similar else ""
        raise InputError(f"{path}: no such file{near}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the data file inside it")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; make the file readable (chmod +r) or copy it somewhere you can read")
    try:
        with open(path, "rb") as fh:
            fh.read(8)
    except OSError as e:
        raise InputError(f"{path} cannot be read: {e.strerror or e}") from None


def open_input(path: str | os.PathLike, dataset: str | None = None, scan: tuple[int, int] | None = None) -> Source:
    """Open a 4D-STEM file read-only and lazily.

    Parameters
    ----------
    path : HDF5 (incl. py4DSTEM/EMD 1.0), ``.npy``, or a detector format RosettaSciIO reads
    dataset : path of the dataset inside an HDF5 file; default: the py4DSTEM
        ``DataCube``, else the only 4-D dataset
    scan : ``(Rx, Ry)`` to view a 3-D stack ``(N, H, W)`` as a cube (``Rx * Ry = N``)

    Returns
    -------
    :class:`Source`

    Raises
    ------
    InputError : missing or unreadable file, unknown format, no/several 4-D datasets,
        non-4-D data, non-numeric dtype
    """
    path = Path(path)
    _check_readable(path)
    import h5py

    with open(path, "rb") as fh:
        magic = fh.read(8)
    if h5py.is_hdf5(path):
        return _open_hdf5(path, dataset, scan)
    if magic.startswith(b"\x93NUMPY"):
        if dataset:
            raise InputError(f"--dataset applies to HDF5 files; {path.name} is a .npy array")
        return _NpySource(path, scan)
    if path.suffix.lower() in HDF5_SUFFIXES:
        raise InputError(f"{path} has an HDF5 extension but is not an HDF5 file (damaged, or still being copied?)")
    if path.suffix.lower() == ".npy":
        raise InputError(f"{path} is not a .npy file (its header is missing); write it with numpy.save")
    return _open_rsciio(path, scan)


def _describe_datasets(items: Sequence[tuple[str, tuple, Any]]) -> str:
    return "; ".join(f"{n} {tuple(s)} {d}" for n, s, d in items[:12]) + (" ..." if len(items) > 12 else "")


def _open_hdf5(path: Path, dataset: str | None, scan) -> Source:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path} cannot be opened as HDF5 ({e}); is it damaged or still being written?") from None
    try:
        is_emd = f.attrs.get("emd_group_type") in ("file", b"file")
        if dataset:
            if dataset not in f:
                found = _datasets(f)
                raise InputError(f"{path} has no dataset '{dataset}'; it has: {_describe_datasets(found) or 'no datasets'}")
            obj = f[dataset]
            if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
                obj = obj["data"]  # an EMD array node: its data
            if not isinstance(obj, h5py.Dataset):
                raise InputError(
                    f"'{dataset}' in {path} is a group, not a dataset; give the path of the dataset (e.g. {dataset.rstrip('/')}/data)"
                )
            kind = "emd" if is_emd else "hdf5"
        else:
            obj, kind = None, "hdf5"
            if is_emd:
                cubes = [ds for ds in _emd_datacubes(f)]
                if len(cubes) == 1:
                    obj, kind = cubes[0], "emd"
                elif len(cubes) > 1:
                    raise InputError(
                        f"{path} holds several py4DSTEM DataCubes: {', '.join(c.name for c in cubes)}; pick one with --dataset"
                    )
            if obj is None:
                found = _datasets(f)
                four = [(n, s, d) for n, s, d in found if len(_squeeze_leading(s)) == 4 and np.dtype(d).kind in "iuf"]
                if len(four) == 1:
                    obj = f[four[0][0]]
                elif len(four) > 1:
                    raise InputError(f"{path} holds several 4-D datasets: {_describe_datasets(four)}; pick one with --dataset PATH")
                else:
                    three = [(n, s, d) for n, s, d in found if len(_squeeze_leading(s)) == 3 and np.dtype(d).kind in "iuf"]
                    if len(three) == 1 and scan is not None:
                        obj = f[three[0][0]]
                    else:
                        hint = " A 3-D stack of frames can be read with --dataset PATH --scan RX,RY." if three else ""
                        raise InputError(
                            f"{path} holds no 4-D dataset (Rx, Ry, Qx, Qy); it has: {_describe_datasets(found) or 'no datasets'}.{hint}"
                        )
        src = _HDF5Source(path, f, obj, kind, scan)
        if kind == "emd":
            src.calibration = _emd_calibration(obj)
            root = obj.name.strip("/").split("/")[0]
            if f"{root}/metadatabundle/preprocessing" in f:
                src.notes.append(f"{path.name} was already preprocessed by prenet-jax; it will be processed again")
        return src
    except BaseException:
        f.close()
        raise


def _datasets(f) -> list[tuple[str, tuple, Any]]:
    import h5py

    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            out.append(("/" + name, obj.shape, obj.dtype))

    f.visititems(visit)
    return out


def _emd_datacubes(f) -> list:
    import h5py

    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _attr(obj, "python_class") == "DataCube" and isinstance(obj.get("data"), h5py.Dataset):
            out.append(obj["data"])

    f.visititems(visit)
    return out


def _attr(obj, key: str, default=None):
    v = obj.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _emd_calibration(ds) -> dict:
    """Pixel sizes and units of the py4DSTEM Calibration of the root holding ``ds``."""
    f = ds.file
    root = ds.name.strip("/").split("/")[0]
    grp = f.get(f"{root}/metadatabundle/calibration")
    out: dict[str, Any] = {}
    if grp is None:
        return out
    for k in ("Q_pixel_size", "R_pixel_size", "Q_pixel_units", "R_pixel_units"):
        if k in grp:
            v = grp[k][()]
            out[k] = v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
    return out


def _open_rsciio(path: Path, scan) -> Source:
    try:
        from rsciio import IO_PLUGINS
    except ImportError:
        raise InputError(
            f"{path.name}: reading '{path.suffix}' files needs RosettaSciIO: pip install 'prenet-jax[io]' "
            "(or convert the file to HDF5 or .npy)"
        ) from None
    import importlib

    ext = path.suffix.lower().lstrip(".")
    if ext == "raw":
        raise InputError(f"{path.name}: for EMPAD data give the .xml file that sits next to the .raw file")
    plugins = [p for p in IO_PLUGINS if ext in [e.lower() for e in p["file_extensions"]]]
    if not plugins:
        raise InputError(
            f"{path.name}: unknown file type '{path.suffix}'; supported: HDF5 (.h5, .hdf5, .emd, .py4dstem), .npy, and the RosettaSciIO formats (.mib, .blo, .dm3/.dm4, EMPAD .xml, .mrc, .ser, .tvips, ...)"
        )
    errors = []
    for p in plugins:
        try:
            mod = importlib.import_module(p["api"])
            try:
                items = mod.file_reader(str(path), lazy=True)
            except TypeError:
                items = mod.file_reader(str(path))
        except Exception as e:  # try the next plugin with this extension
            errors.append(f"{p['name']}: {e}")
            continue
        cands = [it for it in items if len(_squeeze_leading(tuple(it["data"].shape))) in (3, 4)]
        cands4 = [it for it in cands if len(_squeeze_leading(tuple(it["data"].shape))) == 4]
        pick = cands4 or cands
        if not pick:
            shapes = ", ".join(str(tuple(it["data"].shape)) for it in items)
            raise InputError(f"{path.name} ({p['name']}) holds no 4-D data: {shapes}")
        it = pick[0]
        return _DaskSource(path, it["data"], f"rsciio:{p['name']}", scan, _rsciio_calibration(it))
    raise InputError(f"{path.name} could not be read as {' or '.join(p['name'] for p in plugins)}: {'; '.join(errors)}")


def _rsciio_calibration(item: dict) -> dict:
    """Pixel sizes from RosettaSciIO axes (numpy order: navigation first)."""
    axes = item.get("axes") or []
    out: dict[str, Any] = {}
    nav = [a for a in axes if a.get("navigate")]
    sig = [a for a in axes if not a.get("navigate")]
    if sig and all(isinstance(a.get("scale"), (int, float)) for a in sig[-1:]):
        out["Q_pixel_size"] = float(sig[-1]["scale"])
        out["Q_pixel_units"] = str(sig[-1].get("units") or "pixels")
    if nav and isinstance(nav[-1].get("scale"), (int, float)):
        out["R_pixel_size"] = float(nav[-1]["scale"])
        out["R_pixel_units"] = str(nav[-1].get("units") or "pixels")
    return out


# ----------------------------------------------------------------------------- block plan


def plan_blocks(
    shape: tuple[int, int, int, int], in_chunks: tuple[int, int], col_multiple: int, frame_bytes: int, target_bytes: int
) -> list[tuple[int, int, int, int]]:
    """Split the scan into rectangular blocks ``(i0, i1, j0, j1)`` in row-major order.

    Blocks are aligned to the input's storage chunks (each chunk is decompressed
    once) and their columns to ``col_multiple`` (the output's chunk columns, so
    every output chunk is written whole, once); they hold about ``target_bytes``.

    Parameters
    ----------
    shape : ``(Rx, Ry, H, W)`` of the cube
    in_chunks : the input's storage chunk over the scan, ``(rows, cols)`` (:attr:`Source.scan_chunks`)
    col_multiple : the output's chunk columns (:attr:`EMDWriter.chunk_cols`)
    frame_bytes : bytes of one input frame
    target_bytes : about how many bytes one block reads

    Returns
    -------
    The blocks ``(i0, i1, j0, j1)`` covering the scan once: rows ``i0:i1``, columns ``j0:j1``.
    """
    rx, ry = shape[:2]
    cr, cc = max(1, min(in_chunks[0], rx)), max(1, min(in_chunks[1], ry))
    unit = math.lcm(cc, col_multiple)
    row_bytes = ry * frame_bytes
    if cr * row_bytes <= target_bytes:
        rb = cr * max(1, target_bytes // (cr * row_bytes))
        cb = ry
    else:
        rb = cr
        cb = min(ry, unit * max(1, target_bytes // (cr * unit * frame_bytes)))
    blocks = []
    for i0 in range(0, rx, rb):
        for j0 in range(0, ry, cb):
            blocks.append((i0, min(rx, i0 + rb), j0, min(ry, j0 + cb)))
    return blocks


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
