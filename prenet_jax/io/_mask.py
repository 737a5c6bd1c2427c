"""Detector masks from files: ``.npy``, HDF5 (a 2-D dataset) or TIFF; ``True`` = bad."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._source import InputError, _check_readable

__all__ = ["read_mask"]

TIFF_SUFFIXES = (".tif", ".tiff")


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A detector mask: ``(H, W)`` bool, ``True`` = bad pixel.

    Parameters
    ----------
    path : ``.npy``; HDF5 (the only 2-D dataset in it, or ``FILE.h5:/path/to/dataset``);
        TIFF (one page; needs ``tifffile``, in the ``io`` extra). Boolean, or 0/1.
    shape : the frames' ``(H, W)``: the mask must match it

    Raises
    ------
    InputError : missing or unreadable file, no or several 2-D datasets, values other
        than 0/1, a shape that is not the frames' (transposed masks are named), or
        every pixel masked
    """
    import h5py

    text = str(path)
    dataset = None
    if ":" in text and not Path(text).exists():
        text, dataset = text.rsplit(":", 1)
    p = Path(text)
    _check_readable(p)
    what = f"mask {p.name}"
    if h5py.is_hdf5(p):
        m = _hdf5_mask(p, dataset)
        if dataset:
            what += f":{dataset}"
    elif dataset:
        raise InputError(f"{what}: ':{dataset}' names a dataset, but {p.name} is not an HDF5 file")
    elif p.suffix.lower() in TIFF_SUFFIXES:
        try:
            import tifffile
        except ImportError:
            raise InputError(f"{what}: reading TIFF needs tifffile (pip install 'prenet-jax[io]'), or save the mask as .npy") from None
        try:
            m = tifffile.imread(p)
        except Exception as e:
            raise InputError(f"{what} cannot be read as TIFF: {e}") from None
    else:
        try:
            m = np.load(p, allow_pickle=False)
        except Exception as e:
            raise InputError(f"{what}: not a .npy, HDF5 or TIFF file ({e})") from None
    m = np.squeeze(np.asarray(m))
    if m.ndim != 2:
        raise InputError(f"{what} has shape {m.shape}; a mask is one (H, W) image, True = bad pixel")
    if m.dtype != bool:
        if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
            raise InputError(f"{what} holds values other than 0/1 (dtype {m.dtype}); a mask is boolean, True = bad pixel")
        m = m.astype(bool)
    if shape is not None and m.shape != tuple(shape):
        hint = "; it looks transposed: save mask.T" if m.shape == tuple(shape)[::-1] else ""
        raise InputError(f"{what} is {m.shape[0]}x{m.shape[1]} px but the frames are {shape[0]}x{shape[1]}{hint}")
    if m.all():
        raise InputError(f"{what} marks every pixel bad; True = bad pixel (a mask of good pixels must be inverted)")
    return m


def _hdf5_mask(path: Path, dataset: str | None) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"mask {path.name}: no dataset {dataset}")
            return f[dataset][()]
        found: list[str] = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and sum(n != 1 for n in obj.shape) == 2:
                found.append("/" + name)

        f.visititems(visit)
        if len(found) != 1:
            listing = ", ".join(found[:6]) or "none"
            raise InputError(f"mask {path.name}: {len(found)} 2-D datasets ({listing}); name one as {path.name}:/path/to/dataset")
        return f[found[0]][()]
