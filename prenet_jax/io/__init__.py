"""Detector files in and corrected files out.

Readers (:func:`open_input` -> :class:`Source`), one private module per format
family, found through one registry (:data:`FORMATS`, :func:`register_format`):
HDF5 / py4DSTEM EMD / Dectris ARINA and EIGER masters (:mod:`._hdf5`), ``.npy``
(:mod:`._npy`), RosettaSciIO formats (:mod:`._rsciio`: ``.mib``, ``.blo``, ...).
The py4DSTEM-compatible EMD 1.0 writer (:class:`EMDWriter`, :func:`read_result`)
is in :mod:`._emd_writer`; :func:`plan_blocks` splits a scan into the
chunk-aligned blocks a stream reads and writes; :func:`read_mask` reads a
detector mask.
"""

from .._util import sha256_file
from ._emd_writer import EMDWriter, check_output_path, read_result
from ._formats import FORMATS, HDF5_SUFFIXES, Format, open_input, register_format
from ._mask import read_mask
from ._source import FrameView, InputError, OutputError, Source, negative_error, output_error, plan_blocks

__all__ = [
    "FORMATS",
    "HDF5_SUFFIXES",
    "EMDWriter",
    "Format",
    "FrameView",
    "InputError",
    "OutputError",
    "Source",
    "check_output_path",
    "negative_error",
    "open_input",
    "output_error",
    "plan_blocks",
    "read_mask",
    "read_result",
    "register_format",
    "sha256_file",
]
