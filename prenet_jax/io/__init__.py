"""Detector files in and corrected files out.

Readers (:func:`open_input` -> :class:`Source`: HDF5 / py4DSTEM EMD, ``.npy``,
RosettaSciIO formats) and the py4DSTEM-compatible EMD 1.0 writer
(:class:`EMDWriter`, :func:`read_result`); :func:`plan_blocks` splits a scan
into the chunk-aligned blocks a stream reads and writes; :func:`read_mask` reads a
detector mask.
"""

from ._mask import read_mask
from ._readers import HDF5_SUFFIXES, EMDWriter, InputError, OutputError, Source, open_input, plan_blocks, read_result, sha256_file

__all__ = [
    "HDF5_SUFFIXES",
    "EMDWriter",
    "InputError",
    "OutputError",
    "Source",
    "open_input",
    "plan_blocks",
    "read_mask",
    "read_result",
    "sha256_file",
]
