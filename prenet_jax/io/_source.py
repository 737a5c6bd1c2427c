"""The lazily read cube every reader returns: :class:`Source`, its ``(N, H, W)``
:class:`FrameView`, the errors the readers and writer raise, and the block plan.

A reader (one module per format family: :mod:`._hdf5`, :mod:`._npy`,
:mod:`._rsciio`) subclasses :class:`Source` and implements its read hooks;
:func:`prenet_jax.io.open_input` picks the reader from the registry in
:mod:`._formats`.
"""

from __future__ import annotations

import errno
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "OutputError",
    "output_error",
    "negative_error",
    "Source",
    "FrameView",
    "plan_blocks",
]


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
    saturation : the detector's count limit as the file gives it (float), e.g. a
        Merlin counter depth of 6 bits -> 63, a Dectris ``saturation_value``; None
        when the file says nothing (then ``saturation="auto"`` falls back to the
        integer dtype's maximum)
    saturation_from : where :attr:`saturation` comes from, for the log
        (``"the Merlin counter depth 6"``); None with it

    Every read checks that the file has not changed since it was opened (size,
    modification time, inode): a file still being written or copied would give a
    result mixing two versions. Reads that fail raise :class:`InputError`.
    """

    kind = "?"
    saturation: float | None = None
    saturation_from: str | None = None

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
                f"it looks like a stack of {shape[0]} frames: give the scan shape with --scan RX,RY (e.g. --scan {','.join(map(str, scan_guess(shape[0])))})"
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
            raise InputError(f"reading {where} of {self._what()} failed: {_reason(e)}; {self._failure_hint(e)}") from e
        self.check_unchanged()
        return out

    def _failure_hint(self, e: BaseException) -> str:
        """What to tell the user after a read failed with ``e`` (a reader may know better)."""
        return "is the file damaged or truncated?"

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


def scan_guess(n: int) -> tuple[int, int]:
    """``(r, c)`` with ``r * c = n``, as square as possible (an example for ``--scan``)."""
    r = math.isqrt(max(int(n), 1))
    while r > 1 and n % r:
        r -= 1
    return max(r, 1), max(int(n), 1) // max(r, 1)


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
