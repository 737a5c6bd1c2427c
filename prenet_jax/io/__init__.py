"""Detector files in and corrected files out.

Readers (:func:`open_input` -> :class:`Source`: HDF5 / py4DSTEM EMD, ``.npy``,
RosettaSciIO formats) and the py4DSTEM-compatible EMD 1.0 writer
(:class:`EMDWriter`, :func:`read_result`).
"""

from ._readers import HDF5_SUFFIXES, EMDWriter, InputError, OutputError, Source, open_input, read_result, sha256_file

__all__ = ["HDF5_SUFFIXES", "EMDWriter", "InputError", "OutputError", "Source", "open_input", "read_result", "sha256_file"]
