"""The registry of input formats and :func:`open_input`, which consults it.

Each :class:`Format` names its file extensions, a ``probe`` that recognises its
files by their first bytes, and the ``open`` function that returns a
:class:`~._source.Source`. :func:`open_input` opens a file with the first format
whose probe accepts it; a file whose extension claims a format whose probe
refuses it is an error (a damaged or misnamed file); any other file goes to the
formats without a probe (RosettaSciIO, which picks its plugin by extension).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from ._hdf5 import open_hdf5
from ._npy import open_npy
from ._rsciio import open_rsciio
from ._source import InputError, Source, _check_readable

__all__ = ["HDF5_SUFFIXES", "FOLDER_SUFFIXES", "Format", "FORMATS", "register_format", "open_input"]

#: Extensions read with h5py (files whose first bytes say HDF5 are read with h5py too).
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".emd", ".py4dstem", ".hspy", ".nxs")
#: Formats stored as a folder (a zarr directory store), read through RosettaSciIO.
FOLDER_SUFFIXES = (".zspy",)


@dataclasses.dataclass(frozen=True)
class Format:
    """One input format of the registry.

    Attributes
    ----------
    name : short name (``"hdf5"``, ``"npy"``, ``"rsciio"``)
    suffixes : lower-case extensions that claim the format (with the dot)
    probe : ``probe(path, first_bytes) -> bool``: is this file of the format? None:
        the format takes the files no probe accepted
    open : ``open(path, dataset, scan) -> Source``
    misnamed : the error when the extension claims the format but the probe
        refuses the file (``{path}`` is replaced)
    """

    name: str
    suffixes: tuple[str, ...]
    probe: Callable[[Path, bytes], bool] | None
    open: Callable[[Path, str | None, tuple[int, int] | None], Source]
    misnamed: str = ""


def _is_hdf5(path: Path, head: bytes) -> bool:
    import h5py

    return bool(h5py.is_hdf5(path))  # also finds a superblock after a user block


def _is_npy(path: Path, head: bytes) -> bool:
    return head.startswith(b"\x93NUMPY")


#: The formats, in the order :func:`open_input` tries them.
FORMATS: list[Format] = [
    Format(
        "hdf5", HDF5_SUFFIXES, _is_hdf5, open_hdf5, "{path} has an HDF5 extension but is not an HDF5 file (damaged, or still being copied?)"
    ),
    Format("npy", (".npy",), _is_npy, open_npy, "{path} is not a .npy file (its header is missing); write it with numpy.save"),
    Format("rsciio", (), None, open_rsciio),  # any other extension: the RosettaSciIO plugin that claims it
]


def register_format(fmt: Format, first: bool = False) -> None:
    """Add a format to the registry (before the catch-all RosettaSciIO one, or first).

    Parameters
    ----------
    fmt : the format
    first : try it before every other format
    """
    if first:
        FORMATS.insert(0, fmt)
    else:
        at = next((i for i, f in enumerate(FORMATS) if f.probe is None), len(FORMATS))
        FORMATS.insert(at, fmt)


def open_input(path: str | os.PathLike, dataset: str | None = None, scan: tuple[int, int] | None = None) -> Source:
    """Open a 4D-STEM file read-only and lazily.

    Parameters
    ----------
    path : HDF5 (incl. py4DSTEM/EMD 1.0 and Dectris ARINA/EIGER masters), ``.npy``,
        or a detector format RosettaSciIO reads
    dataset : path of the dataset inside an HDF5 file; default: the py4DSTEM
        ``DataCube``, else the only 4-D dataset, else a Dectris master's frames
    scan : ``(Rx, Ry)`` to view a 3-D stack ``(N, H, W)`` as a cube (``Rx * Ry = N``)

    Returns
    -------
    :class:`Source`

    Raises
    ------
    InputError : missing or unreadable file, unknown format, no/several 4-D datasets,
        non-4-D data, non-numeric dtype, a compression filter that is not available
    """
    path = Path(path)
    if path.is_dir() and path.suffix.lower() in FOLDER_SUFFIXES:  # a format stored as a folder (zarr)
        return open_rsciio(path, dataset, scan)
    _check_readable(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    for fmt in FORMATS:
        if fmt.probe is not None and fmt.probe(path, head):
            return fmt.open(path, dataset, scan)
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        if fmt.probe is not None and suffix in fmt.suffixes:
            raise InputError(fmt.misnamed.format(path=path))
    for fmt in FORMATS:
        if fmt.probe is None:
            return fmt.open(path, dataset, scan)
    raise InputError(f"{path.name}: unknown file type '{path.suffix}'")
