""".npy arrays, read with positioned reads at the array's offset.

No memory map: the pages of a map stay in the process's resident memory once
touched, so a map of a cube larger than memory looks like a cube in memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._source import InputError, Source, _runs

__all__ = ["NpySource", "open_npy"]


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


class NpySource(Source):
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


def open_npy(path: Path, dataset: str | None, scan) -> Source:
    """Open a ``.npy`` array (``dataset`` must be None: it names HDF5 datasets).

    Parameters
    ----------
    path : the ``.npy`` file
    dataset : must be None
    scan : ``(Rx, Ry)`` for a 3-D stack of frames, or None

    Returns
    -------
    NpySource
    """
    if dataset:
        raise InputError(f"--dataset applies to HDF5 files; {path.name} is a .npy array")
    return NpySource(path, scan)
