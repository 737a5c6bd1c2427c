"""Kept for code written against the old single module: use :mod:`prenet_jax.io`.

The readers and the writer now live in :mod:`._source` (Source, FrameView, errors,
block plan), :mod:`._formats` (the registry, :func:`open_input`), :mod:`._hdf5`,
:mod:`._npy`, :mod:`._rsciio` and :mod:`._emd_writer`.
"""

from .._util import sha256_file
from ._emd_writer import EMDWriter, check_output_path, read_result
from ._formats import HDF5_SUFFIXES, open_input
from ._source import FrameView, InputError, OutputError, Source, _check_readable, negative_error, output_error, plan_blocks

__all__ = [
    "InputError",
    "OutputError",
    "output_error",
    "negative_error",
    "Source",
    "FrameView",
    "open_input",
    "sha256_file",
    "EMDWriter",
    "check_output_path",
    "read_result",
    "plan_blocks",
    "HDF5_SUFFIXES",
    "_check_readable",
]
