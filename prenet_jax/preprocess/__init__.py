"""File to file: ``prenet-jax preprocess``.

:func:`preprocess_file` validates the input, calibrates the ellipse on a sample of
frames (pass 0), streams every frame through the compiled step with reader and
writer threads (pass 1, :func:`stream`) and finishes the output file and its
diagnostic figures. :func:`preprocess_files` runs many files into a folder with one
pipeline (one compilation per frame shape), skipping failed ones, and
:func:`preprocess_distributed` shares one scan among the processes of a
``jax.distributed`` job. ``descan=`` adds a centres pass and a fitted descan model
(:class:`DescanPass`), ``mask=`` a detector mask (:class:`MaskInfo`); :func:`check_centers` checks the centre stage
against both classical estimators before pass 0 (:class:`CenterCheck`). SIGINT/SIGTERM stop
a run cleanly (:class:`Interrupted`).
"""

from ._batch import FileStatus, ReadAhead, batch_outputs, expand_inputs, is_finished_output, preprocess_files
from ._cancel import PHASES, Cancel, Interrupted, catch_signals
from ._checks import CHECK_FRAMES, DISAGREE_PX, CenterCheck, check_centers
from ._descan import DESCAN_MODES, DescanPass
from ._diagnostics import diagnostic_paths, write_diagnostics
from ._distributed import initialize as initialize_distributed
from ._distributed import preprocess_distributed
from ._masks import MaskInfo
from ._provenance import ellipse_from_py4dstem, ellipse_to_py4dstem
from ._run import FileResult, preprocess_file
from ._stream import (
    FLAG_NAMES,
    FLAG_NEGATIVE,
    FLAG_SATURATED,
    FLAGS_EXCLUDED,
    StreamError,
    StreamStats,
    make_post,
    output_dtype_for,
    stream,
)

__all__ = [
    "CHECK_FRAMES",
    "DESCAN_MODES",
    "DISAGREE_PX",
    "FLAG_NAMES",
    "FLAG_NEGATIVE",
    "FLAG_SATURATED",
    "FLAGS_EXCLUDED",
    "PHASES",
    "Cancel",
    "CenterCheck",
    "DescanPass",
    "FileResult",
    "FileStatus",
    "Interrupted",
    "MaskInfo",
    "ReadAhead",
    "StreamError",
    "StreamStats",
    "batch_outputs",
    "catch_signals",
    "check_centers",
    "diagnostic_paths",
    "ellipse_from_py4dstem",
    "ellipse_to_py4dstem",
    "expand_inputs",
    "initialize_distributed",
    "is_finished_output",
    "make_post",
    "output_dtype_for",
    "preprocess_distributed",
    "preprocess_file",
    "preprocess_files",
    "stream",
    "write_diagnostics",
]
