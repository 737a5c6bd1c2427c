"""File to file: :func:`preprocess_file`, the library side of ``prenet-jax preprocess``.

A run is up to seven steps, each a function below::

    validate  -> open the input read-only, check the options and the output path
    mask      -> the detector mask: given, and hot and dead pixels found (:mod:`._masks`)
    calibrate -> pass 0: the dataset's ellipse from frames sampled across the scan
                 (:meth:`prenet_jax.Pipeline.calibrate`), unless one is given; with
                 ``refine=True`` refined by the azimuthal variance of the recentred
                 mean (:func:`prenet_jax.ops.refine_ellipse`)
    descan    -> with ``descan=``: the centre of every frame, and the descan model fitted
                 over the scan (:mod:`._descan`)
    stream    -> pass 1: every frame through the compiled step into a temporary file
                 (:func:`prenet_jax.preprocess._stream.stream`), about the descan's
                 centres when there is one
    finish    -> metadata (:mod:`._provenance`), figures, then the atomic rename
    summary   -> the lines printed at the end

Everything a run creates is removed in ONE ``finally`` unless the rename happened,
whatever stops it: an error, a full disk, or SIGINT/SIGTERM (:mod:`._cancel`). See
``docs/preprocess.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._util import format_rate
from ..config import PipelineConfig
from ..conventions import EDGE_LOSS_FLAG, FLAG_EDGE, FLAG_NO_BEAM, FLAG_REFINE, Ellipse
from ..io import EMDWriter, FrameView, InputError, Source, check_output_path, open_input, output_error, sha256_file
from ..pipeline import MIN_FRAME_SIDE, refine_targets
from ._cancel import Cancel, Interrupted, catch_signals, redeliver
from ._checks import CHECK_FRAMES, CenterCheck, check_centers
from ._descan import DESCAN_MODES, DescanPass, descan_lines, descan_pass, descan_record
from ._masks import MaskInfo, build_mask, mask_lines, mask_record
from ._provenance import ellipse_from_py4dstem, ellipse_to_py4dstem, frame_center, output_calibration, preprocessing_record
from ._stream import FLAG_NAMES, FLAG_NEGATIVE, FLAG_SATURATED, FLAGS_EXCLUDED, StreamStats, output_dtype_for, stream

__all__ = ["preprocess_file", "FileResult", "ellipse_to_py4dstem", "ellipse_from_py4dstem"]


@dataclasses.dataclass
class FileResult:
    """Summary of :func:`preprocess_file`.

    Attributes
    ----------
    output : the written file
    figures : diagnostic PNGs written
    ellipse : the distortion undone (our convention)
    ellipse_py4dstem : ``(a, b, theta)`` of it in py4DSTEM's convention
    residual_ratio : a/b of the ellipse fitted to the corrected mean pattern (1: circular)
    centers, centers_after, friedel_after, lost, flags, mean_before, mean_after : see
        :class:`prenet_jax.preprocess._stream.StreamStats`
    seconds : wall, pass0, read, compute, write
    frames : frames processed
    lines : the summary printed
    residual_angle : a-axis angle (rad, our convention) of that fitted ellipse;
        meaningless when ``residual_ratio`` is 1
    refinement : with ``refine=True``, as :attr:`prenet_jax.PreprocessResult.refinement`:
        ``ellipse_before``, ``ellipse_after``, ``variance_before``, ``variance_after``,
        ``ellipse_ok`` (when pass 0 estimated the ellipse), ``centers_failed`` (frames
        flagged ``FLAG_REFINE``), ``center_shift_median`` (px, median distance between
        the estimated and the refined centres of the frames sampled in pass 0; NaN
        without pass 0) and ``center_shift_frames`` (how many); else None
    descan : with ``descan=``: the :class:`prenet_jax.preprocess._descan.DescanPass`
        (the fit, the centres measured per frame); ``centers`` are then the centres
        the frames were warped about
    mask : the :class:`prenet_jax.preprocess._masks.MaskInfo` of the run (``mask.mask``
        the (H, W) bool mask used, None when nothing was masked)
    """

    output: Path
    figures: list
    ellipse: Ellipse
    ellipse_py4dstem: tuple
    residual_ratio: float
    centers: np.ndarray
    centers_after: np.ndarray
    friedel_after: np.ndarray
    lost: np.ndarray
    flags: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray
    seconds: dict
    frames: int
    lines: list
    residual_angle: float = float("nan")
    refinement: dict | None = None
    descan: DescanPass | None = None
    mask: MaskInfo | None = None


@dataclasses.dataclass
class _Job:
    """What :func:`_validate` settled: the opened input, the pipeline and the output's form."""

    input: Path
    output: Path
    source: Source
    pipeline: Any
    out_dtype: np.dtype
    saturation: float | None
    negative: str
    overwrite: bool
    diagnostics: bool
    compression: str
    block_bytes: int
    refine: frozenset[str] = frozenset()  # what is refined: "centers", "ellipse"
    pad: int = 0
    descan: str | None = None  # a mode of DESCAN_MODES
    mask: np.ndarray | None = None  # given: the file's and the pipeline's, True = bad
    bad_pixels: str = "auto"
    checks: CenterCheck | None = None  # what the checks before pass 0 measured and decided
    scan_source: Any = None  # denoise_method "scan": the input through the scan denoiser (_frames_source)

    @property
    def config(self) -> PipelineConfig:
        return self.pipeline.config

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """The output cube's shape: the input's, the frames ``2 pad`` px larger."""
        rx, ry, h, w = self.source.shape
        return (rx, ry, h + 2 * self.pad, w + 2 * self.pad)


@dataclasses.dataclass
class _Calibration:
    ellipse: Ellipse
    source: str  # "fixed", "none", or the pipeline's ellipse method
    seconds: float = 0.0
    estimated: bool = False
    refinement: dict = dataclasses.field(default_factory=dict)  # refine=True: what pass 0 refined
    warning: str | None = None  # why the estimate was not applied
    split_half: dict | None = None  # the split-half check of the estimate (_split_half)


@dataclasses.dataclass
class _Finished:
    residual: float
    radius: float
    figures: list
    measures: dict | None
    denoise: dict
    residual_angle: float = float("nan")
    refinement: dict | None = None  # refine=True: see FileResult.refinement


def preprocess_file(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    pipeline=None,
    dataset: str | None = None,
    scan: tuple[int, int] | None = None,
    ellipse: Ellipse | None = None,
    output_dtype: str = "float32",
    overwrite: bool = False,
    diagnostics: bool = True,
    compression: str = "gzip",
    saturation: float | str | None = "auto",
    negative: str = "clip",
    refine: bool | str = False,
    pad: int = 0,
    descan: str | None = None,
    mask=None,
    bad_pixels: str = "auto",
    checksum: bool = True,
    block_bytes: int = 32 << 20,
    weights_id: str = "none (classical methods)",
    options: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cancel: Cancel | None = None,
) -> FileResult:
    """Preprocess a 4D-STEM file into a py4DSTEM-compatible HDF5 file.

    The output and its figures appear whole or not at all: whatever stops the run
    (an error, a full disk, SIGINT or SIGTERM) removes everything it created, and the
    input is only ever read.

    Parameters
    ----------
    input : HDF5 / py4DSTEM EMD 1.0 / ``.npy`` / a RosettaSciIO detector format
    output : the ``.h5`` file to write (atomically; refused if it exists unless ``overwrite``)
    pipeline : a :class:`prenet_jax.Pipeline`; default the classical methods
    dataset, scan : see :func:`prenet_jax.io.open_input`
    ellipse : a known distortion; default estimated in pass 0 (or none when the
        pipeline's ellipse method is ``"none"``)
    output_dtype : ``"float32"``, ``"input"`` or an integer dtype name (rounded, clipped)
    diagnostics : write the four PNGs next to the output
    compression : ``"gzip"`` or ``"none"``
    saturation : pixel level flagged as saturated: ``"auto"`` (the integer dtype's
        maximum; none for floats), a number, or None
    negative : ``"clip"`` (flag, treat as 0) or ``"error"``
    refine : self-calibration, as :meth:`prenet_jax.Pipeline.preprocess` with
        ``refine=True``: every beam centre refined by Friedel symmetry in the compiled
        step (``center_refine="friedel"``; a frame where it fails keeps its estimate and
        is flagged ``FLAG_REFINE``), and the ellipse estimated in pass 0 refined by the
        azimuthal variance of the recentred mean pattern. A given ``ellipse`` is kept
        as given. The summary and the record hold the values before and after.
        ``"centers"`` or ``"ellipse"`` refines one of them, ``"all"`` (= True) both
    pad : px of zeros added on each side of every frame: the output frames are
        ``(H + 2 pad, W + 2 pad)``, and a frame shifted by up to ``pad`` px loses no count
        at the edge (the fraction each frame loses is recorded either way, and frames
        losing over 1 % are flagged ``FLAG_EDGE``)
    descan : None: every frame is warped about its own centre. A mode of
        :func:`prenet_jax.ops.fit_descan` (``"frame"``, ``"plane"``, ``"quadratic"``,
        ``"auto"``): a centres pass first finds every frame's centre, a descan model is
        fitted over the scan robustly (frames flagged empty or non-finite left out;
        outliers flagged ``FLAG_DESCAN``), and pass 1 warps every frame about the
        centre the mode chooses. The model, the measured centres and the residuals go
        into the record (``qx0_fit``, ``qx0_meas``, ``qx0_residuals``, ...) and the
        centre figure. The frames are read and denoised twice.
    mask : a detector mask, True = bad pixel: an (H, W) array, or a file
        (:func:`prenet_jax.io.read_mask`: ``.npy``, HDF5 ``FILE.h5[:/dataset]``, TIFF);
        joined with the pipeline's own mask. Masked pixels are left out of every centre
        estimate (with their mirror images) and filled from their neighbours before
        denoising; the mask used goes into the record and the mean-pattern figure
    bad_pixels : ``"auto"``: also mask the hot and dead pixels found in frames sampled
        across the scan (:func:`prenet_jax.ops.detect_bad_pixels`); ``"none"``: only the
        given mask
    checksum : record the input's SHA-256 (read concurrently with processing)
    block_bytes : size of one read; host memory stays a small multiple of it
    weights_id, options : provenance to record
    progress : show progress bars
    log : where the notices and the summary go
    cancel : the run's stop flag, for a caller that handles the signals itself (the
        command line). Default: while the run lasts, SIGINT and SIGTERM stop it
        cleanly (from the main thread), and are then handed to the handlers the
        caller had: SIGINT raises ``KeyboardInterrupt``, SIGTERM ends the process.

    Returns
    -------
    :class:`FileResult`

    Raises
    ------
    InputError : the input or an option is unusable (the message says why and what to do)
    OutputError : writing failed (disk full, folder not writable)
    StreamError : a worker of pass 1 failed otherwise
    Interrupted : ``cancel`` was set (only when ``cancel`` is given)
    """
    args = dict(
        pipeline=pipeline, dataset=dataset, scan=scan, ellipse=ellipse, output_dtype=output_dtype, overwrite=overwrite,
        diagnostics=diagnostics, compression=compression, saturation=saturation, negative=negative, refine=refine, pad=pad, descan=descan, mask=mask, bad_pixels=bad_pixels, checksum=checksum,
        block_bytes=block_bytes, weights_id=weights_id, options=options, progress=progress, log=log,
    )  # fmt: skip
    if cancel is not None:
        return _preprocess(Path(input), Path(output), cancel=cancel, **args)
    cancel = Cancel()
    with catch_signals(cancel):
        try:
            return _preprocess(Path(input), Path(output), cancel=cancel, **args)
        except Interrupted as e:
            stopped = e
    redeliver(stopped)  # the caller's handlers are back: let them act on the signal
    raise stopped


def _preprocess(input: Path, output: Path, *, cancel: Cancel, ellipse, checksum, progress, weights_id, options, log, **opts) -> FileResult:
    t_all = time.perf_counter()
    job = _validate(input, output, log=log, fixed_ellipse=ellipse is not None, **opts)
    writer: EMDWriter | None = None
    checks: _Checksum | None = None
    figures: list[Path] = []  # written by _finish, removed here unless the output is committed
    try:
        cancel.check()
        checks = _Checksum(input, cancel) if checksum else None
        masks = _mask(job, log)
        _scan_fallback(job, log)
        cancel.check()
        _check(job, log)
        cancel.check()
        cal = _calibrate(job, ellipse, progress, cancel, log)
        dp = _descan(job, progress, cancel, log) if job.descan else None
        writer = EMDWriter(output, job.out_shape, job.out_dtype, overwrite=job.overwrite, compression=job.compression)
        st = _stream_pass(job, writer, cal, progress, cancel, dp)
        done = _finish(job, writer, st, cal, checks, weights_id, options, cancel, log, figures, dp, masks)
    finally:  # the one clean-up: nothing but a committed output survives
        if checks is not None:
            checks.stop()
        if writer is None or not writer.done:
            if writer is not None:
                writer.abort()
            for p in figures:
                p.unlink(missing_ok=True)
        job.source.close()
    seconds = dict(st.seconds, pass0=cal.seconds, total=time.perf_counter() - t_all)
    if dp is not None:
        seconds["centers_pass"] = dp.seconds
    lines = _summary(job, st, cal, done, seconds, dp, masks)
    for line in lines:
        log(line)
    return FileResult(
        output=output,
        figures=done.figures,
        ellipse=cal.ellipse,
        ellipse_py4dstem=ellipse_to_py4dstem(cal.ellipse, done.radius),
        residual_ratio=done.residual,
        centers=st.centers,
        centers_after=st.centers_after,
        friedel_after=st.friedel_after,
        lost=st.lost,
        flags=st.flags,
        mean_before=st.mean_before,
        mean_after=st.mean_after,
        seconds=seconds,
        frames=job.source.n_frames,
        lines=lines,
        residual_angle=done.residual_angle,
        refinement=done.refinement,
        descan=dp,
        mask=masks,
    )


# ----------------------------------------------------------------------------- 1. validate


def _min_side(cfg: PipelineConfig) -> int:
    side = MIN_FRAME_SIDE
    if cfg.denoise_method == "network":
        side = max(side, 2**cfg.denoiser.depth)
    if cfg.center_method == "network":
        side = max(side, 2**cfg.center_net.depth)
    return side


def _validate(
    input: Path,
    output: Path,
    *,
    pipeline,
    dataset,
    scan,
    output_dtype,
    overwrite,
    diagnostics,
    compression,
    saturation,
    negative,
    refine,
    pad,
    descan,
    mask,
    bad_pixels,
    block_bytes,
    log,
    fixed_ellipse,
) -> _Job:
    """Check the options and the output path, open the input and check its frames;
    log what will run. Raises :class:`InputError` before anything is written."""
    _check_options(negative, compression, pad, bad_pixels, descan)
    _check_output(input, output, overwrite, diagnostics)
    pipeline, refine = _file_pipeline(pipeline, refine, fixed_ellipse, descan)
    cfg = pipeline.config

    source = open_input(input, dataset, scan)
    try:
        rx, ry, h, w = source.shape
        side = _min_side(cfg)
        if min(h, w) < side:
            raise InputError(
                f"frames are {h}x{w} px; the {'network methods need' if side > MIN_FRAME_SIDE else 'pipeline needs'} at least {side}x{side}. "
                f"Is {source.dataset or 'the array'} ordered (Rx, Ry, Qx, Qy)? Scan axes must come first."
            )
        out_dt = output_dtype_for(output_dtype, source.dtype)
        given = _given_mask(mask, pipeline, (h, w))
    except BaseException:
        source.close()
        raise
    sat = _saturation_level(saturation, source)
    _log_plan(log, source, pipeline, refine, fixed_ellipse, pad, descan)
    return _Job(
        input, output, source, pipeline, out_dt, sat, negative, overwrite, diagnostics, compression, block_bytes, refine, int(pad), descan,
        given, bad_pixels,
    )  # fmt: skip


def _check_options(negative, compression, pad, bad_pixels, descan) -> None:
    """The options' values, each against what it can be."""
    if negative not in ("clip", "error"):
        raise InputError(f"negative={negative!r}: use 'clip' or 'error'")
    if compression not in ("gzip", "none"):
        raise InputError(f"compression {compression!r}: use 'gzip' or 'none'")
    if not (isinstance(pad, int | np.integer) and 0 <= pad <= 4096):
        raise InputError(f"pad={pad!r}: give the px of zeros to add on each side of the output frames, an integer from 0 to 4096")
    if bad_pixels not in ("auto", "none"):
        raise InputError(f"--bad-pixels {bad_pixels!r}: use 'auto' or 'none'")
    if descan is not None and descan not in DESCAN_MODES:
        raise InputError(f"--descan {descan!r}: use one of {', '.join(DESCAN_MODES)}")


def _check_output(input: Path, output: Path, overwrite: bool, diagnostics: bool) -> None:
    """The output and its figures may be written: free (or ``overwrite``), not the input."""
    from ._diagnostics import diagnostic_paths

    check_output_path(output, overwrite)
    if diagnostics and not overwrite:
        taken = [p for p in diagnostic_paths(output) if p.exists()]
        if taken:
            raise InputError(f"diagnostic figure {taken[0]} exists; pass --overwrite, --no-diagnostics, or choose another output name")
    if output.resolve() == input.resolve():
        raise InputError("the output would replace the input; choose another output name")


def _file_pipeline(pipeline, refine, fixed_ellipse, descan):
    """``(pipeline, refine targets)`` of a file run: the classical pipeline when none is
    given, negatives clipped (the stream flags them), the centre refinement compiled in
    when ``--refine`` asks for it; options that contradict the pipeline are refused."""
    from ..pipeline import Pipeline

    if pipeline is None:
        pipeline = Pipeline.classical()
    if pipeline.config.negative != "clip":  # the stream flags and clips negatives; it refuses them itself if asked
        pipeline = Pipeline(pipeline.config.replace(negative="clip"), pipeline.params, devices=pipeline.devices, mask=pipeline.mask)
    try:
        refine = refine_targets(refine)
    except ValueError as e:
        raise InputError(f"--refine: {e}") from None
    if refine == {"ellipse"} and fixed_ellipse:
        raise InputError("--refine ellipse with a given ellipse: there is nothing to refine; drop one of them")
    if "centers" in refine:
        if pipeline.config.center_method == "none":
            raise InputError(
                "--refine refines the beam centres, but the centre stage is off (--no-center, center_method 'none'); drop one of them"
            )
        pipeline = pipeline.with_refinement()  # center_refine="friedel" in the compiled step
    cfg = pipeline.config
    if descan is not None and cfg.center_method == "none":
        raise InputError(
            "--descan fits a model to the beam centres, but the centre stage is off (--no-center, center_method 'none'); drop one of them"
        )
    return pipeline, refine


def _saturation_level(saturation, source: Source) -> float | None:
    """The count at which the detector saturates: ``"auto"`` takes the detector's limit
    the file gives, else the integer dtype's maximum (None for float data)."""
    if saturation == "auto":
        if source.saturation is not None:
            return float(source.saturation)
        return float(np.iinfo(source.dtype).max) if source.dtype.kind in "iu" else None
    return None if saturation is None else float(saturation)


def _log_plan(log, source: Source, pipeline, refine, fixed_ellipse, pad, descan) -> None:
    """What will run: the input, the methods, the devices, and notes on the options."""
    cfg = pipeline.config
    h, w = source.shape[2:]
    for note in source.notes:
        log(f"note: {note}")
    devs = pipeline.devices
    kinds = sorted({d.platform for d in devs})
    log(f"input: {source.describe()}")
    log(
        f"methods: denoise={_denoise_name(cfg)}, center={_center_name(cfg)}, ellipse={'fixed' if fixed_ellipse else cfg.ellipse_method}"
        f"{' + refinement' if 'ellipse' in refine and not fixed_ellipse and cfg.ellipse_method != 'none' else ''}; "
        f"interpolation {cfg.interpolation}; batch {pipeline.batch_size} on {len(devs)} {'/'.join(kinds)} device(s)"
    )
    if kinds == ["cpu"]:
        log(f"note: running on the CPU ({os.cpu_count()} cores); a GPU is much faster for full-size cubes")
    if "ellipse" in refine and fixed_ellipse:
        log("note: the ellipse is given: --refine refines the beam centres only and undoes the given ellipse as it is")
    if pad:
        log(f"note: the output frames are padded by {pad} px on each side: {h + 2 * pad}x{w + 2 * pad} px")
    if descan is not None:
        log(
            f"note: --descan {descan}: a centres pass over every frame comes first, then the model is fitted, then pass 1 (the frames are read and denoised twice)"
        )


def _given_mask(mask, pipeline, shape: tuple[int, int]) -> np.ndarray | None:
    """The user's mask (a file or an array) joined with the pipeline's own; True = bad."""
    from ..io import read_mask

    if mask is None:
        given = None
    elif isinstance(mask, str | os.PathLike):
        given = read_mask(mask, shape)
    else:
        given = np.asarray(mask)
        if given.shape != shape or given.dtype != bool:
            raise InputError(f"mask: expected an ({shape[0]}, {shape[1]}) bool array, True = bad pixel; got {given.dtype} {given.shape}")
    own = pipeline.mask
    if own is not None:
        if own.shape != shape:
            raise InputError(f"the pipeline's mask is {own.shape[0]}x{own.shape[1]} px but the frames are {shape[0]}x{shape[1]}")
        given = own if given is None else given | own
    return given


# ----------------------------------------------------------------------------- 2. mask


def _mask(job: _Job, log) -> MaskInfo:
    """The run's mask; the job's pipeline gets it (its own compiled step)."""
    info = build_mask(job.source, job.mask, job.bad_pixels == "auto")
    for line in mask_lines(info):
        log(line)
    if info.mask is not None:
        job.pipeline = job.pipeline.with_mask(info.mask)
    return info


def _center_name(cfg: PipelineConfig) -> str:
    """The centre stage as the log names it: method, consensus, refinement."""
    consensus = ""
    if cfg.center_method == "network" and cfg.center_consensus != "none":
        consensus = f" ({cfg.center_consensus} where it agrees within {cfg.consensus_px:g} px)"
    return cfg.center_method + consensus + ("" if cfg.center_refine == "none" else f" + {cfg.center_refine} refinement")


def _denoise_name(cfg: PipelineConfig) -> str:
    if cfg.denoise_method != "gaussian":
        return cfg.denoise_method
    return "gaussian (sigma from each frame's counts)" if cfg.gaussian_sigma is None else f"gaussian (sigma {cfg.gaussian_sigma:g} px)"


class _Checksum:
    """The input's SHA-256, read by a thread while the run goes on."""

    def __init__(self, path: Path, cancel: Cancel):
        self._stop = threading.Event()
        self._cancel = cancel
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(path,), name="prenet-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        either = _Either(self._stop, self._cancel.event)
        try:
            self._box["sha256"] = sha256_file(path, either)
        except OSError as e:
            self._box["error"] = str(e)

    def result(self) -> str | None:
        self._thread.join()
        return self._box.get("sha256")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _Either:
    """``is_set()`` of any of several events."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


# ----------------------------------------------------------------------------- 2b. checks


def _check(job: _Job, log) -> None:
    """The centre and beam checks of :mod:`._checks` on frames sampled across the scan;
    where they fail, the job's pipeline falls back (and the warnings say so)."""
    from ..pipeline import Pipeline

    pipe = job.pipeline
    if pipe.config.center_method == "none":
        return
    src = job.source
    n = src.n_frames
    idx = np.unique(np.linspace(0, n - 1, min(n, CHECK_FRAMES)).round().astype(np.int64))
    frames = FrameView(src, sanitize=True, negative=job.negative)[idx]
    positions = np.stack([idx // src.shape[1], idx % src.shape[1]], -1)
    # a batch of the sample's size: the run's batch of 128 would mostly compute padding
    # (kept on the pipeline: the next file of a run reuses its compiled program)
    probe = getattr(pipe, "_check_probe", None)
    if probe is None or probe.config.batch_size != len(idx):
        probe = Pipeline(pipe.config.replace(batch_size=len(idx)), pipe.params, devices=pipe.devices, mask=pipe.mask)
        pipe._check_probe = probe
    chk = check_centers(frames, positions, probe, job.saturation)
    job.checks = chk
    for line in chk.warnings:
        log(line)
    if chk.used == chk.method:
        return
    changes: dict = {"center_method": chk.used, "center_consensus": "none"}
    if chk.used == "none":  # no beam: nothing to centre, refine or fit
        changes.update(center_refine="none", ellipse_method="none")
        job.refine = job.refine - {"centers"}
        job.descan = None
    job.pipeline = Pipeline(pipe.config.replace(**changes), pipe.params, devices=pipe.devices, mask=pipe.mask)


# ----------------------------------------------------------------------------- 3. calibrate (pass 0)


def _calibrate(job: _Job, ellipse: Ellipse | None, progress: bool, cancel: Cancel, log) -> _Calibration:
    """The ellipse to undo: given, none, or estimated from frames sampled across the scan."""
    cfg = job.config
    if ellipse is not None:
        return _Calibration(ellipse, "fixed")
    if cfg.ellipse_method == "none":
        return _Calibration(Ellipse.identity(), "none")
    t0 = time.perf_counter()
    cancel.phase = "pass0"
    n0 = job.pipeline.calibration_size(FrameView(job.source, sanitize=True, negative=job.negative))
    bar = _bar(progress, n0, "pass 0 (ellipse)")

    def on_read(n: int) -> None:  # after every read of a batch: progress, then the stop flag
        if bar:
            bar.update(n)
        cancel.hold("pass0")
        cancel.check()

    view = FrameView(job.source, on_read=on_read, sanitize=True, negative=job.negative)
    refinement: dict = {}
    try:
        if "centers" in job.refine:
            ellipse, mean, refinement, halves = _calibrate_refined(job.pipeline, view, n0)
        else:
            ellipse, mean, halves = job.pipeline.calibrate(view, n0, halves=True)
    except ValueError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{e}. Give the ellipse with --ellipse RATIO,ANGLE_DEG, or skip it with --no-ellipse") from None
    finally:
        if bar:
            bar.close()
    cancel.check()  # a signal during the last compile or the fit
    secs = time.perf_counter() - t0
    log(
        f"pass 0: ellipse from {n0} frames sampled across the scan: ratio {ellipse.ratio:.4f}, angle {math.degrees(ellipse.angle):.2f} deg ({secs:.1f} s)"
    )
    if "ellipse" in job.refine:
        t1 = time.perf_counter()
        ref = job.pipeline.refine_ellipse(mean, ellipse)
        cancel.check()
        refinement.update(
            ellipse_before=ellipse,
            ellipse_after=ref.ellipse,
            variance_before=ref.variance_before,
            variance_after=ref.variance_after,
            ellipse_ok=ref.ok,
        )
        log(f"pass 0: {_ellipse_refinement_text(refinement)} ({time.perf_counter() - t1:.1f} s)")
        if ref.ellipse.ratio > MAX_APPLIED_RATIO >= ellipse.ratio:  # a refinement never leaves the plausible range
            refinement.update(ellipse_after=ellipse, ellipse_ok=False)
            log(
                f"pass 0: the refined ratio {ref.ellipse.ratio:.4f} is over {MAX_APPLIED_RATIO:g}, beyond projector distortion: the estimate is kept"
            )
        else:
            ellipse = ref.ellipse
        secs = time.perf_counter() - t0
    estimate = ellipse
    ellipse, warning = _plausible(ellipse, mean)
    split = None
    if warning is None or ellipse.ratio != 1.0:  # not already set aside: do the halves agree?
        split = _split_half(job.pipeline, estimate, halves)
        if split["warning"]:
            ellipse, warning = Ellipse.identity(), split["warning"] + (f" ({warning[9:]})" if warning else "")
    if warning:
        log(warning)
    source = cfg.ellipse_method + (", not applied" if warning and ellipse.ratio == 1.0 else "")
    split = None if split is None else {k: v for k, v in split.items() if k != "warning"}
    return _Calibration(ellipse, source, secs, estimated=True, refinement=refinement, warning=warning, split_half=split)


#: The halves' ellipticity vectors ``(ratio - 1)(cos 2theta, sin 2theta)`` may differ by
#: this much whatever the estimate (a ratio of 1.002 is below what any warp shows).
SPLIT_HALF_FLOOR = 0.002
#: An estimate is applied when it is at least this many times its noise, the halves'
#: difference over 2 (3: the former edge fit's 0.039 on the 8-frame Merlin file was 2.1
#: times it, halves 1.038 at 131 deg and 1.057 at 112 deg; drawn scans with one ellipse
#: of 1.05 give 10 and more).
SPLIT_HALF_SIGMAS = 3.0


def _split_half(pipe, estimate: Ellipse, halves) -> dict:
    """The split-half check of the estimated ellipse: the same estimate on the means of
    the even- and odd-numbered sampled frames (``halves``: ``(mean_a, mean_b,
    coverage)``).

    The halves are independent, so their difference is about twice the noise of their
    average: an estimate whose ellipticity vector ``e = (ratio - 1)(cos 2theta, sin
    2theta)`` is under :data:`SPLIT_HALF_SIGMAS` times that noise, ``|e_a - e_b| / 2``
    (where the halves differ by more than :data:`SPLIT_HALF_FLOOR`), is noise, not
    optics, and is not applied (as the former edge fit's 1.039 on the 8 saturated
    frames of a real Merlin file would have been). Returns ``{ratio_a, angle_a, ratio_b, angle_b,
    difference, estimate, warning}`` (``warning`` None when the halves agree; angles in
    degrees).
    """
    e = _evec(estimate)
    fits = []
    for mean in halves[:2]:
        try:
            if not np.isfinite(mean).all():
                raise ValueError("a half without usable frames")
            fits.append(pipe.estimate_ellipse(mean, halves[2]))
        except ValueError:
            fits.append(None)
    out = {"estimate": float(np.hypot(*e))}
    if any(f is None for f in fits):
        out.update(difference=float("nan"))
        out["warning"] = (
            f"warning: the ellipse estimate (ratio {estimate.ratio:.4f}, angle {math.degrees(estimate.angle):.2f} deg) is not applied: "
            "the mean of one half of the sampled frames shows no ellipse, so the estimate cannot be told from noise; the "
            "frames are only recentred. Give a known ellipse with --ellipse RATIO,ANGLE_DEG"
        )
        return out
    ea, eb = _evec(fits[0]), _evec(fits[1])
    diff = float(np.hypot(*(ea - eb)))
    out.update(
        ratio_a=fits[0].ratio,
        angle_a=math.degrees(fits[0].angle),
        ratio_b=fits[1].ratio,
        angle_b=math.degrees(fits[1].angle),
        difference=diff,
        warning=None,
    )
    if diff > max(out["estimate"] / SPLIT_HALF_SIGMAS * 2.0, SPLIT_HALF_FLOOR):
        out["warning"] = (
            f"warning: the ellipse estimate (ratio {estimate.ratio:.4f}, angle {math.degrees(estimate.angle):.2f} deg) is not applied: "
            f"two halves of the sampled frames disagree (ratio {fits[0].ratio:.4f} at {math.degrees(fits[0].angle):.1f} deg vs "
            f"{fits[1].ratio:.4f} at {math.degrees(fits[1].angle):.1f} deg: ellipticity difference {diff:.4f}, so the estimate's "
            f"{out['estimate']:.4f} is under {SPLIT_HALF_SIGMAS:g} times its noise): it is noise, not optics; the frames are only recentred. Give a known ellipse with "
            "--ellipse RATIO,ANGLE_DEG, or sample more frames"
        )
    return out


def _evec(e: Ellipse) -> np.ndarray:
    return (e.ratio - 1.0) * np.array([math.cos(2 * e.angle), math.sin(2 * e.angle)])


#: An estimated ellipse is applied only within these bounds: projector distortions are
#: a few per cent (training draws ratios up to 1.2), and an edge of a few px radius
#: cannot measure one (a 1 % ratio is 0.05 px at 10 px).
MAX_APPLIED_RATIO = 1.2
MIN_ELLIPSE_RADIUS = 10.0


def _plausible(ellipse: Ellipse, mean: np.ndarray) -> tuple[Ellipse, str | None]:
    """The estimated ellipse and a ``warning:`` line where it is doubtful: an axis ratio
    over :data:`MAX_APPLIED_RATIO` (beyond projector distortion) is not applied (the
    identity is returned); one measured on an edge of under :data:`MIN_ELLIPSE_RADIUS`
    px radius is applied, with the warning."""
    # the radius of the edge, fitted without the mask's coverage: where a mask hides too
    # much of it for that fit (NaN), the estimate (which saw the coverage) stands
    _, radius, _ = _fit_mean(mean)
    seen = f"ratio {ellipse.ratio:.4f} at an edge radius of {radius:.1f} px"
    if ellipse.ratio > MAX_APPLIED_RATIO:
        return Ellipse.identity(), (
            f"warning: the ellipse estimate is not applied ({seen}: a ratio over {MAX_APPLIED_RATIO:g} is beyond projector "
            "distortion); the frames are only recentred. Give a known ellipse with --ellipse RATIO,ANGLE_DEG"
        )
    if radius < MIN_ELLIPSE_RADIUS:
        return ellipse, (
            f"warning: the ellipse ({seen}) is measured on an edge of under {MIN_ELLIPSE_RADIUS:g} px radius, where a 1 % "
            "ratio is 0.05 px: it is applied but uncertain. Give a known ellipse with --ellipse RATIO,ANGLE_DEG, or --no-ellipse"
        )
    return ellipse, None


@functools.lru_cache(maxsize=1)
def _masked_sum():
    """``(corrected, flags, weights) -> (sum, count, weights used)`` of the frames
    :meth:`prenet_jax.Pipeline.calibrate` averages (not NaN/Inf, not empty)."""
    import jax
    import jax.numpy as jnp

    from ..conventions import FLAG_EMPTY, FLAG_NONFINITE

    def fn(corrected, flags, weights):
        w = weights * ((flags & (FLAG_NONFINITE | FLAG_EMPTY)) == 0)  # negatives were clipped: keep the frame
        return jnp.einsum("b,bhw->hw", w, corrected, precision=jax.lax.Precision.HIGHEST), w.sum(), w

    return jax.jit(fn)


def _calibrate_refined(pipe, frames, n: int) -> tuple[Ellipse, np.ndarray, dict, tuple]:
    """:meth:`prenet_jax.Pipeline.calibrate` of a pipeline that refines its centres, which
    also measures the shift the refinement applies: ``(ellipse estimate, recentred mean,
    {center_shift_median, center_shift_frames}, halves)``, the median distance (px) between the
    estimated and the refined centre over the sampled frames whose refinement held;
    ``halves`` as ``Pipeline.calibrate(..., halves=True)`` gives them.

    The frames are recentred by the compiled step itself (identity ellipse), so pass 1
    reuses its compilation; the estimates before refinement cost one more, lighter,
    program (denoise and centre stages)."""
    import jax
    import jax.numpy as jnp

    n = min(frames.shape[0], n)
    idx = np.unique(np.linspace(0, frames.shape[0] - 1, n).round().astype(np.int64))
    estimate = pipe._estimate
    masked_sum = _masked_sum()
    eye = jax.device_put(jnp.eye(2, dtype=jnp.float32), pipe.replicated)
    total = total_a = jnp.zeros(frames.shape[-2:], jnp.float32)
    count = count_a = jnp.zeros((), jnp.float32)
    per_frame = []
    b = pipe.batch_size
    for start, nb, batch in pipe._batches(frames, True, idx):
        w = jax.device_put((np.arange(b) < nb).astype(np.float32), pipe.data_sharding)
        half = jax.device_put(((start + np.arange(b)) % 2 == 0).astype(np.float32), pipe.data_sharding)
        corrected, refined, flags = pipe.step_fn(pipe.params, batch, eye)
        s, c, used = masked_sum(corrected, flags, w)
        sa, ca, _ = masked_sum(corrected, flags, w * half)  # the even-numbered half
        total, count, total_a, count_a = total + s, count + c, total_a + sa, count_a + ca
        per_frame.append((estimate(pipe.params, batch), refined, flags, used))
    if float(count) == 0:
        raise ValueError("no usable frame for the ellipse estimate: every sampled frame is empty or non-finite")
    mean = np.asarray(total / count)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = np.asarray(total_a) / float(count_a)
        mean_b = (np.asarray(total) - np.asarray(total_a)) / float(count - count_a)
    est, ref, fl, used = (np.concatenate([np.asarray(a[k]) for a in per_frame]) for k in range(4))
    held = (used > 0) & ((fl & FLAG_REFINE) == 0)
    shift = np.linalg.norm(ref[held].astype(np.float64) - est[held], axis=-1)
    stats = {"center_shift_median": float(np.median(shift)) if shift.size else float("nan"), "center_shift_frames": int(shift.size)}
    coverage = pipe.coverage(ref, mean.shape, weights=used)  # the mask's, or the frame edge's
    return pipe.estimate_ellipse(mean, coverage), mean, stats, (mean_a, mean_b, coverage)


def _ellipse_refinement_text(r: dict) -> str:
    e0, e1 = r["ellipse_before"], r["ellipse_after"]
    text = (
        f"ellipse refined by the azimuthal variance of the recentred mean: ratio {e0.ratio:.4f} -> {e1.ratio:.4f}, "
        f"angle {math.degrees(e0.angle):.2f} -> {math.degrees(e1.angle):.2f} deg (variance {r['variance_before']:.3g} -> {r['variance_after']:.3g})"
    )
    return (
        text
        if r["ellipse_ok"]
        else text + "; the variance fell too little to tell the ellipse (single-crystal spots?): the estimate is kept"
    )


# ----------------------------------------------------------------------------- 4. descan (the centres pass)


def _scan_fallback(job: _Job, log) -> None:
    """``denoise_method "scan"`` on frames the risk cannot judge: the frame-by-frame
    Gaussian instead, with a warning that says why."""
    from ..pipeline import Pipeline
    from ._scan_source import scan_noise_problem

    if job.config.denoise_method != "scan":
        return
    reason = scan_noise_problem(job.source, job.pipeline.mask)
    if not reason:
        return
    log(
        f"warning: --denoise-method scan needs counted electrons (Poisson, independent pixels), and here {reason}; "
        "the frames are denoised one by one with the risk-chosen Gaussian instead (--no-denoise to leave them as they are)"
    )
    pipe = job.pipeline
    job.pipeline = Pipeline(pipe.config.replace(denoise_method="gaussian"), pipe.params, devices=pipe.devices, mask=pipe.mask)


def _frames_source(job: _Job):
    """What the centres and streaming passes read: the input, or with ``denoise_method
    "scan"`` the input through the scan denoiser (the step then leaves the frames as
    they are; the checks and pass 0 read the raw counts)."""
    if job.config.denoise_method != "scan":
        return job.source
    if job.scan_source is None:
        from ._scan_source import ScanDenoisedSource

        job.scan_source = ScanDenoisedSource(job.source, job.pipeline.mask)
    return job.scan_source


def _descan(job: _Job, progress: bool, cancel: Cancel, log) -> DescanPass:
    cancel.phase = "centers"
    bar = _bar(progress, job.source.n_frames, "centres (descan)")
    try:
        dp = descan_pass(
            _frames_source(job), job.pipeline, job.descan, negative=job.negative, block_bytes=job.block_bytes,
            progress=bar.update if bar else None, cancel=cancel,
        )  # fmt: skip
    finally:
        if bar:
            bar.close()
    cancel.check()
    log(descan_lines(dp)[0])  # all of them in the summary
    return dp


# ----------------------------------------------------------------------------- 5. stream (pass 1)


def _stream_pass(
    job: _Job, writer: EMDWriter, cal: _Calibration, progress: bool, cancel: Cancel, dp: DescanPass | None = None
) -> StreamStats:
    cancel.phase = "compile"  # the first batch compiles the step
    bar = _bar(progress, job.source.n_frames, "preprocess")
    try:
        return stream(
            _frames_source(job), job.pipeline, cal.ellipse.matrix(), writer,
            out_dtype=job.out_dtype, saturation=job.saturation, negative=job.negative, block_bytes=job.block_bytes,
            progress=bar.update if bar else None, cancel=cancel, pad=job.pad,
            centers=None if dp is None else dp.fit.centers, flags=None if dp is None else dp.flags,
        )  # fmt: skip
    finally:
        if bar:
            bar.close()


# ----------------------------------------------------------------------------- 6. finish


def _fit_mean(mean: np.ndarray, coverage: np.ndarray | None = None) -> tuple[float, float, float]:
    """(a/b, sqrt(a b), a-axis angle in rad) of the ellipse of the steepest edge of a
    centred mean pattern (the classical estimate, :func:`prenet_jax.ops.fit_ellipse_edge`,
    off the azimuths a mask hid: ``coverage``); NaN if none."""
    import jax.numpy as jnp

    from ..ops import fit_ellipse_edge

    nan = float("nan")
    try:
        cov = None if coverage is None else jnp.asarray(coverage, jnp.float32)
        fit = fit_ellipse_edge(jnp.asarray(mean, jnp.float32), coverage=cov)  # jitted: the estimate's own compilation
        a, b, angle = float(fit["a"]), float(fit["b"]), float(fit["angle"])
    except Exception:
        return nan, nan, nan
    if not (np.isfinite(a) and np.isfinite(b) and b > 0):
        return nan, nan, nan
    return a / b, math.sqrt(a * b), angle


def _output_coverage(job: _Job, st: StreamStats, cal: _Calibration, n: int = 1024) -> np.ndarray | None:
    """The fraction of the frames in the corrected mean that saw each of its pixels (the
    mask's, and the frame edge's), from up to ``n`` of the frames in it (their centres and
    the ellipse undone)."""
    good = np.flatnonzero(((st.flags & FLAGS_EXCLUDED) == 0).reshape(-1))
    if not good.size:
        return None
    pick = good[np.unique(np.linspace(0, good.size - 1, min(n, good.size)).round().astype(np.int64))]
    centers = st.centers.reshape(-1, 2)[pick] + job.pad  # in the padded frame the step warped
    return job.pipeline.coverage(centers, job.out_shape[2:], matrix=cal.ellipse.matrix())


def denoise_report(cfg: PipelineConfig, sigmas: np.ndarray | None) -> dict:
    """What the denoiser did to the counts: a description, and for the dose-adaptive
    Gaussian the width each frame got (computed on the device as in the step)."""
    if cfg.denoise_method == "none":
        return {"description": "none: the counts are as read (negatives and NaN/Inf set to 0)"}
    if cfg.denoise_method == "network":
        return {
            "description": f"network (CBAM U-Net, {cfg.transform} transform): each frame replaced by the estimate of its noise-free intensity"
        }
    if cfg.gaussian_sigma is not None:
        return {"description": f"gaussian filter, sigma {cfg.gaussian_sigma:g} px for every frame (fixed)"}
    text = "gaussian filter, sigma chosen per frame by its estimated risk (exact Poisson unbiased risk over a 0-4 px grid); no filter where it would not help"
    return {"description": text} if sigmas is None else {"description": text, "sigma": np.asarray(sigmas, np.float64)}


def _finish(
    job: _Job,
    writer: EMDWriter,
    st: StreamStats,
    cal: _Calibration,
    checks,
    weights_id,
    options,
    cancel: Cancel,
    log,
    figures: list,
    dp: DescanPass | None = None,
    masks: MaskInfo | None = None,
) -> _Finished:
    """Metadata, figures, then the atomic rename. Figures are written before the
    rename, into ``figures``, so that a failure leaves neither: the caller's
    clean-up removes them."""
    from ._diagnostics import write_diagnostics

    cancel.enter("finish")
    if st.n_good == 0:
        log("warning: every frame is flagged empty or non-finite: the means and figures are empty")
    residual, radius, residual_angle = _fit_mean(st.mean_after, _output_coverage(job, st, cal))
    if not np.isfinite(radius):
        radius = 1.0  # no edge to measure: a, b are then the axes of a unit circle
    cfg = job.config
    src = job.source
    denoise = job.scan_source.record() if job.scan_source is not None else denoise_report(cfg, st.sigmas)
    refinement = None
    if job.refine or cfg.center_refine != "none":
        refinement = dict(cal.refinement)
        if cfg.center_refine != "none":
            refinement = {"center_shift_median": float("nan"), "center_shift_frames": 0, **refinement}
            refinement["centers_failed"] = int(((st.flags & FLAG_REFINE) != 0).sum())
    undone = cfg.ellipse_method != "none" or cal.source == "fixed"
    cal_out = output_calibration(src.calibration, job.out_shape, radius if undone else None)
    record = preprocessing_record(
        st=st, shape=src.shape, ellipse=cal.ellipse, ellipse_source=cal.source, radius=radius, residual=residual,
        denoise=denoise, config=cfg.to_dict(), devices=job.pipeline.devices, weights_id=weights_id, options=dict(options or {}),
        input_path=job.input, input_dataset=src.dataset, input_format=src.kind, input_dtype=src.dtype,
        input_sha256=checks.result() if checks is not None else None, output_dtype=job.out_dtype, saturation=job.saturation,
        residual_angle=residual_angle, refinement=refinement, pad=job.pad,
    )  # fmt: skip
    if dp is not None:
        record.update(descan_record(dp))
    if masks is not None:
        record.update(mask_record(masks))
    if job.checks is not None:
        record.update(job.checks.record())
    if cal.warning:
        record["ellipse_warning"] = cal.warning
    if cal.split_half is not None:
        record["ellipse_split_half"] = cal.split_half
    src.check_unchanged()  # the checksum and the means are of the file as it was opened
    cancel.check()
    try:
        writer.write_metadata(cal_out, record)
    except OSError as e:
        raise output_error(job.output, "writing the metadata of", e) from e
    done = _Finished(residual, radius, figures, None, denoise, residual_angle, refinement)
    if job.diagnostics:
        title = f"{job.input.name}" + (f":{src.dataset}" if src.dataset else "")
        good = (st.flags & FLAGS_EXCLUDED) == 0
        note = f"residual ellipse of the corrected mean: ratio {residual:.4f}" + (
            f", angle {math.degrees(residual_angle):.1f} deg" if np.isfinite(residual_angle) else ""
        )
        if refinement is not None and "ellipse_before" in refinement:
            e0, e1 = refinement["ellipse_before"], refinement["ellipse_after"]
            note += f"\nellipse undone, refined: ratio {e0.ratio:.4f} -> {e1.ratio:.4f}, angle {math.degrees(e0.angle):.2f} -> {math.degrees(e1.angle):.2f} deg"
        # What was done to the counts belongs where people look, not only in config_json.
        note += "\n" + textwrap.fill(_denoise_line(denoise, st.counts, good), 150)
        try:
            indep = after_checks(cfg)[1]
            paths, done.measures = write_diagnostics(
                job.output, st.mean_before, st.mean_after, st.centers if dp is None else dp.measured,
                st.friedel_after if indep == "friedel" else st.centers_after,
                good, title, between=cancel.check, note=note, after_label=f"after: {AFTER_NAMES[indep]} of the output (independent check)",
                descan=None if dp is None else dp.fit, mask=None if masks is None else masks.mask,
            )  # fmt: skip
            figures.extend(paths)
        except OSError as e:
            raise output_error(job.output.parent, "writing the diagnostic figures in", e) from e

    def last_moment() -> None:
        cancel.phase = "close"
        cancel.hold("close")
        cancel.check()

    writer.commit(before_rename=last_moment)
    return done


# ----------------------------------------------------------------------------- 7. summary


def _summary(
    job: _Job,
    st: StreamStats,
    cal: _Calibration,
    done: _Finished,
    seconds: dict,
    dp: DescanPass | None = None,
    masks: MaskInfo | None = None,
) -> list[str]:
    n = job.source.n_frames
    h, w = job.out_shape[2:]
    c0 = frame_center(h, w)
    a, b, theta = ellipse_to_py4dstem(cal.ellipse, done.radius)
    p0 = f" after pass 0's {cal.seconds:.1f} s" if cal.estimated else ""
    if dp is not None:
        p0 += f"{' and' if p0 else ' after'} the centres pass's {dp.seconds:.1f} s"
    lines = [
        f"done: {n} frames in {seconds['wall']:.1f} s ({format_rate(n / max(seconds['wall'], 1e-9))} frames/s){p0}; "
        f"busy: read {seconds['read']:.1f} s, compute {seconds['compute']:.1f} s, write {seconds['write']:.1f} s"
    ]
    good = (st.flags & FLAGS_EXCLUDED) == 0
    sel = good & np.isfinite(st.centers).all(-1)
    if sel.any() and not (job.checks is not None and job.checks.beamless):
        lines.extend(_center_lines(job.config, st, sel, c0, None if dp is None else dp.measured))
    if dp is not None:
        lines.extend(descan_lines(dp))
    lines.extend(_edge_lines(job, st, good))
    ref = done.refinement
    refined = ref is not None and "ellipse_before" in ref
    lines.append(
        f"ellipse ({cal.source}{', refined' if refined else ''}): ratio a/b {cal.ellipse.ratio:.4f}, a-axis {math.degrees(cal.ellipse.angle):.2f} deg from +col toward +row "
        f"[py4DSTEM: a {a:.3f} px, b {b:.3f} px, theta {theta:.4f} rad]; after correction the mean pattern's ratio is {done.residual:.4f}"
        + (f" (a-axis {math.degrees(done.residual_angle):.1f} deg)" if np.isfinite(done.residual_angle) else "")
    )
    if refined:
        lines.append(f"refinement: {_ellipse_refinement_text(ref)}")
    if ref is not None and "centers_failed" in ref:
        shift = (
            f"median shift {ref['center_shift_median']:.3f} px over the {ref['center_shift_frames']} frames sampled in pass 0 where it held"
            if ref["center_shift_frames"]
            else "shift not measured (measured in pass 0 with refine=True)"
        )
        lines.append(
            f"refinement: beam centres by Friedel symmetry, {shift}; {ref['centers_failed']} of {n} frames fell back to the estimate (flagged {FLAG_REFINE})"
        )
    if done.measures is not None:
        m = done.measures
        lines.append(
            f"radial anisotropy of the mean pattern (azimuthal std / mean): before {m['before']['anisotropy']:.4f}, after {m['after']['anisotropy']:.4f}"
        )
    lines.append(_denoise_line(done.denoise, st.counts, good))
    counts = {bit: int(((st.flags & bit) != 0).sum()) for bit in FLAG_NAMES}
    sat = job.saturation
    flag_txt = ", ".join(f"{counts[bit]} {name}" for bit, name in FLAG_NAMES.items())
    src = job.source
    sat_from = (
        f", from {src.saturation_from}"
        if sat is not None and src.saturation is not None and sat == float(src.saturation) and src.saturation_from
        else f", the {src.dtype.name} maximum"
        if sat is not None and src.dtype.kind in "iu" and sat == float(np.iinfo(src.dtype).max)
        else ""
    )
    lines.append(f"frames flagged: {flag_txt}" + (f" (saturation level {sat:g}{sat_from})" if sat is not None else ""))
    if counts[FLAG_NEGATIVE]:
        lines.append(
            f"note: {counts[FLAG_NEGATIVE]} frames had negative pixels (min {st.raw_min:.4g}); they were treated as zero counts (dark-subtracted data?)"
        )
    if counts[FLAG_SATURATED] and sat is not None:
        lines.append(f"note: {counts[FLAG_SATURATED]} frames reach the saturation level {sat:g}: their direct-beam intensity is clipped")
    lines.extend(_check_lines(job, st, cal, sel, c0))
    size = job.output.stat().st_size
    figs = done.figures
    lines.append(
        f"wrote {job.output} ({size / 2**20:.1f} MiB)" + (f" and {len(figs)} figures: {', '.join(p.name for p in figs)}" if figs else "")
    )
    return lines


#: Mean offset (px) of the corrected frames' beam centre from the frame centre, by the
#: independent check, beyond which the run warns that the recentring did not hold.
AFTER_CHECK_PX = 2.0


def _check_lines(job: _Job, st: StreamStats, cal: _Calibration, sel: np.ndarray, c0) -> list[str]:
    """The checks' verdicts: the warnings after pass 1, then one ``checks:`` line."""
    warnings = [] if job.checks is None else list(job.checks.warnings)
    if cal.warning:
        warnings.append(cal.warning)
    lines = []
    no_beam = int(((st.flags & FLAG_NO_BEAM) != 0).sum())
    if no_beam and (job.checks is None or not job.checks.beamless):
        lines.append(
            f"warning: {no_beam} of {st.flags.size} frames show no direct beam (flagged {FLAG_NO_BEAM}): their centres are no beam centres"
        )
    _, indep = after_checks(job.config)
    after = (st.centers_after if indep == "com" else st.friedel_after)[sel]
    after = after[np.isfinite(after).all(-1)]
    if job.config.center_method != "none" and after.size:
        off = float(np.median(np.linalg.norm(after - np.asarray(c0), axis=-1)))
        if off > AFTER_CHECK_PX:
            lines.append(
                f"warning: after the correction the {AFTER_NAMES[indep]} of the frames lies {off:.1f} px from the frame centre "
                f"(median): the two estimators disagree on these data, and the beam centres are uncertain by about that much"
            )
    warnings += lines
    if warnings:
        return lines + [f"checks: {len(warnings)} warning{'s' if len(warnings) > 1 else ''} (above)"]
    if job.checks is None:
        return ["checks: none run (no centre stage)"]
    d = job.checks.distance
    return [
        f"checks: held (a direct beam in all {job.checks.frames} sampled frames; the centre estimators agree: "
        f"median {d['used-com']:.2f} px to the centre of mass, {d['used-friedel']:.2f} px to Friedel symmetry)"
    ]


def after_checks(cfg: PipelineConfig) -> tuple[str, str]:
    """``(self-consistency, independent check)``: the names of the two estimators of
    the corrected frames' centres (``"com"``, ``"friedel"``). The independent one is of
    a different kind than the estimator that chose the shift: Friedel symmetry checks a
    centre of mass (or a network), the centre of mass checks a Friedel centre."""
    friedel = cfg.center_method == "friedel" or cfg.center_refine == "friedel"
    friedel = friedel or (cfg.center_method == "network" and cfg.center_consensus == "friedel")
    return ("friedel", "com") if friedel else ("com", "friedel")


AFTER_NAMES = {"com": "centre of mass", "friedel": "Friedel symmetry"}


def _center_lines(cfg: PipelineConfig, st: StreamStats, sel: np.ndarray, c0, measured: np.ndarray | None = None) -> list[str]:
    """The beam centre spread before (``measured``, default the centres used), and
    after by both estimators of the output."""
    after = {"com": st.centers_after[sel], "friedel": st.friedel_after[sel]}
    same, indep = after_checks(cfg)
    before = st.centers if measured is None else measured
    sb = before[sel & np.isfinite(before).all(-1)].std(0)
    lines = [f"beam centre spread (std over the scan): before row {sb[0]:.3f} px, col {sb[1]:.3f} px"]
    for name, role in ((indep, "independent check"), (same, "self-consistency")):
        c = after[name][np.isfinite(after[name]).all(-1)]
        if not c.size:
            lines.append(f"  after, {AFTER_NAMES[name]} ({role}): no frame could be measured")
            continue
        sa = c.std(0)
        off = np.abs(c - np.asarray(c0)).mean(0)
        lines.append(
            f"  after, {AFTER_NAMES[name]} ({role}): row {sa[0]:.3f} px, col {sa[1]:.3f} px; mean |offset| from the frame centre {off[0]:.3f}, {off[1]:.3f} px"
            + (f" ({sel.sum() - len(c)} frames not measured)" if len(c) < sel.sum() else "")
        )
    return lines


def _edge_lines(job: _Job, st: StreamStats, good: np.ndarray) -> list[str]:
    """What the shift moved out of the frame, and the ``--pad`` that keeps it."""
    lost = st.lost[good]
    if not lost.size:
        return []
    over = int(((st.flags & FLAG_EDGE) != 0).sum())
    line = (
        f"counts moved out of the frame by the correction: median {np.median(lost):.2%}, max {lost.max():.2%} of a frame's counts; "
        f"{over} frames over {EDGE_LOSS_FLAG:.0%} (flagged {FLAG_EDGE})"
    )
    if over:
        h, w = job.source.shape[2:]
        offset = np.abs(st.centers[good] - np.asarray(frame_center(h, w))).max()
        line += f"; --pad {math.ceil(offset) + 2} keeps their counts (the output frames grow by twice that)"
    return [line]


def _denoise_line(denoise: dict, counts: np.ndarray | None, good: np.ndarray) -> str:
    line = f"denoise: {denoise['description']}"
    sigma = denoise.get("sigma")
    if sigma is None or counts is None or not good.any():
        return line
    s, c = sigma[good], counts[good]
    off = int((s == 0).sum())
    line += f"; counts per frame {np.percentile(c, 5):.3g} to {np.percentile(c, 95):.3g} (5th-95th pct), median {np.median(c):.3g}"
    if off == s.size:
        return line + f"; no frame needed a filter (sigma 0 for all {off})"
    on = s[s > 0]
    return line + f"; sigma {on.min():.2f} to {on.max():.2f} px (median {np.median(on):.2f}) on {on.size} frames, none on {off}"


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, unit="frame", unit_scale=False, dynamic_ncols=True, disable=None, smoothing=0.1)
