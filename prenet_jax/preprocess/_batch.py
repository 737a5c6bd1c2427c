"""Many files in one run: ``prenet-jax preprocess A.h5 B.mib C.npy -o OUTDIR/``.

A session at the microscope writes dozens of scans. :func:`preprocess_files` runs
:func:`~prenet_jax.preprocess.preprocess_file` on each, into ``OUTDIR/<stem>_pre.h5``
with its figures, with ONE pipeline: its compiled programs are cached by shape, so
files of the same frame shape and dtype compile once for all of them (measured: 18
compilations for the first file of a run and none for the next; the figures' polar
transform, whose radius follows the measured centre, may add one small compile a file).

A file that fails (unreadable, bad values, an output that cannot be written) is
reported and skipped, and the others go on; an interruption (SIGINT, SIGTERM) stops
the whole run, removes the file in progress and keeps the finished ones, which a
re-run with ``resume=True`` skips (outputs appear whole or not at all, so an output
that exists and carries the ``preprocessing`` record is finished).

While a file is processed, the next one is read ahead into the operating system's
page cache by a thread (:class:`ReadAhead`, at most a quarter of the free memory), so
its reads (and its checksum) come from memory instead of waiting on the disk.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .._util import format_rate
from ..io import HDF5_SUFFIXES, InputError, OutputError, read_result
from ._cancel import Cancel, Interrupted, catch_signals, redeliver
from ._run import FileResult, preprocess_file
from ._stream import StreamError

__all__ = ["FileStatus", "ReadAhead", "batch_outputs", "expand_inputs", "is_finished_output", "preprocess_files", "status_table"]

#: The suffix of the output of each input in a run over many files.
OUTPUT_SUFFIX = "_pre.h5"

#: Extensions taken from a folder given as input (a single file is tried whatever its
#: extension; EMPAD data are read from the ``.xml`` beside the ``.raw``).
FOLDER_SUFFIXES = HDF5_SUFFIXES + (".npy", ".mib", ".blo", ".dm3", ".dm4", ".xml", ".mrc", ".ser", ".tvips")


@dataclasses.dataclass
class FileStatus:
    """How one file of a run went.

    Attributes
    ----------
    input, output : the paths
    status : ``"done"``, ``"skipped"`` (finished by an earlier run, ``resume``),
        ``"failed"``, ``"interrupted"`` or ``"pending"`` (not reached)
    reason : why it failed or was skipped (one line)
    problem : for a failure, ``"input"`` (the input or an option: exit status 2) or
        ``"output"`` (writing or a worker failed: exit status 1)
    frames, seconds : frames processed and the wall time of the file, end to end (s:
        reading, pass 0, the compile of the first file, pass 1, figures)
    flagged : frames with any flag (non-finite, empty, saturated, edge loss, ...; the
        file's summary and record say which)
    result : the :class:`~prenet_jax.preprocess.FileResult` of a finished file
    read_ahead : bytes of this file read into the page cache while the previous file ran
    """

    input: Path
    output: Path
    status: str = "pending"
    reason: str = ""
    problem: str = ""
    frames: int = 0
    seconds: float = 0.0
    flagged: int = 0
    result: FileResult | None = None
    read_ahead: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (their files with a known extension, sorted; not the outputs of a
    run, ``*_pre.h5``) and quoted glob patterns -> the list of input files, each once.

    Raises :class:`InputError` for a name that matches nothing.
    """
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES and not p.name.endswith(OUTPUT_SUFFIX) and not p.name.startswith(".")
            )
            if not found:
                raise InputError(f"{path}/ holds no 4D-STEM files (looked for {', '.join(FOLDER_SUFFIXES)})")
            out += found
        elif path.exists():
            out.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise InputError(f"{text}: no file matches this pattern")
            out += found
        else:
            raise InputError(f"{text}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def batch_outputs(inputs: list[Path], outdir: Path) -> list[Path]:
    """``OUTDIR/<stem>_pre.h5`` for every input; two inputs with the same stem (from
    different folders, or ``scan.h5`` and ``scan.npy``) would overwrite each other and
    are refused up front."""
    outs = [Path(outdir) / f"{p.stem}{OUTPUT_SUFFIX}" for p in inputs]
    by_name: dict[Path, list[Path]] = {}
    for i, o in zip(inputs, outs):
        by_name.setdefault(o, []).append(i)
    clash = {o: ins for o, ins in by_name.items() if len(ins) > 1}
    if clash:
        text = "; ".join(f"{', '.join(map(str, ins))} -> {o.name}" for o, ins in clash.items())
        raise InputError(f"several inputs would write the same output ({text}); rename them or run them into different folders")
    return outs


def is_finished_output(path: Path) -> bool:
    """Whether ``path`` is an output of ``prenet-jax preprocess`` (an EMD file with the
    ``preprocessing`` record: outputs are renamed into place only when complete)."""
    try:
        read_result(path)
    except (OSError, KeyError):
        return False
    return True


def _flagged(result: FileResult) -> int:
    return int((np.asarray(result.flags) != 0).sum())


def preprocess_files(
    inputs: Iterable[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    pipeline=None,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    cancel: Cancel | None = None,
    read_ahead: bool = True,
    **options,
) -> list[FileStatus]:
    """Preprocess many files into ``outdir`` with one pipeline (one compilation per
    frame shape).

    Parameters
    ----------
    inputs : files, folders or glob patterns (:func:`expand_inputs`)
    outdir : the folder of the outputs (created if missing); input ``X.ext`` is written
        to ``outdir/X_pre.h5`` with its figures
    pipeline : a :class:`prenet_jax.Pipeline`; default the classical methods
    resume : skip an input whose output is already finished (:func:`is_finished_output`)
    overwrite : replace existing outputs (else an existing output fails that file)
    log : where the notices, each file's summary and the final table go
    cancel : the run's stop flag (the command line's); default: SIGINT and SIGTERM stop
        the run cleanly while it lasts, and are re-raised as :class:`Interrupted`
    read_ahead : read the next file into the page cache while one runs (:class:`ReadAhead`)
    options : the keyword arguments of :func:`~prenet_jax.preprocess.preprocess_file`
        (``ellipse``, ``output_dtype``, ``refine``, ``pad``, ...), the same for every file

    Returns
    -------
    one :class:`FileStatus` per input, in order

    Raises
    ------
    InputError : before anything runs, when the inputs or ``outdir`` are unusable
    Interrupted : a signal stopped the run (the finished outputs stay)
    """
    files = expand_inputs(inputs)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"-o {outdir}: with several inputs the output must be a folder, and this is a file")
    outs = batch_outputs(files, outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the output folder {outdir} ({e.strerror or e}); choose another one") from None
    if pipeline is None:
        from ..config import PipelineConfig
        from ..pipeline import Pipeline

        pipeline = Pipeline(PipelineConfig.classical())
    statuses = [FileStatus(i, o) for i, o in zip(files, outs)]
    if cancel is not None:
        return _run_all(statuses, pipeline, resume, overwrite, log, cancel, read_ahead, options)
    cancel = Cancel()
    with catch_signals(cancel):
        try:
            return _run_all(statuses, pipeline, resume, overwrite, log, cancel, read_ahead, options)
        except Interrupted as e:
            stopped = e
    redeliver(stopped)  # the caller's handlers are back: let them act on the signal
    raise stopped


class ReadAhead:
    """Read a file into the page cache in a background thread, while another file is
    processed: the next file's reads then come from memory.

    Reads the file from its start in 8 MiB chunks (after a ``POSIX_FADV_WILLNEED`` hint)
    until its end, ``budget`` bytes, or :meth:`stop`. The bytes are thrown away: the
    kernel keeps them. For an EMPAD ``.xml`` header, the ``.raw`` beside it is read.

    Parameters
    ----------
    path : the file
    budget : at most this many bytes (default: a quarter of the available memory, so
        that warming the next file does not evict the current one's pages)
    """

    CHUNK = 8 << 20

    def __init__(self, path: str | os.PathLike, budget: int | None = None):
        path = Path(path)
        if path.suffix.lower() == ".xml" and path.with_suffix(".raw").exists():
            path = path.with_suffix(".raw")
        self.path = path
        self.budget = _available_memory() // 4 if budget is None else int(budget)
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prenet-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with open(self.path, "rb", buffering=0) as f:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(f.fileno(), 0, min(self.budget, os.fstat(f.fileno()).st_size), os.POSIX_FADV_WILLNEED)
                while not self._stop.is_set() and self.bytes < self.budget:
                    chunk = f.read(min(self.CHUNK, self.budget - self.bytes))
                    if not chunk:
                        return
                    self.bytes += len(chunk)
        except OSError:
            return  # a file that cannot be read fails in its own turn, with its own message

    def stop(self) -> int:
        """Stop reading (the file's own run takes over); returns the bytes read."""
        self._stop.set()
        self._thread.join()
        return self.bytes


def _available_memory() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (1 GiB where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 30


def _run_all(
    statuses: list[FileStatus], pipeline, resume: bool, overwrite: bool, log, cancel: Cancel, read_ahead: bool, options: dict
) -> list[FileStatus]:
    ahead: ReadAhead | None = None
    try:
        for k, st in enumerate(statuses):
            if ahead is not None:
                st.read_ahead = ahead.stop()
            nxt = statuses[k + 1] if read_ahead and k + 1 < len(statuses) else None
            # not a file whose output exists: it will be skipped (resume) or fail
            ahead = ReadAhead(nxt.input) if nxt is not None and (overwrite or not nxt.output.exists()) else None
            _run_one(k, st, statuses, pipeline, resume, overwrite, log, cancel, options)
    finally:
        if ahead is not None:
            ahead.stop()
    log(status_table(statuses))
    return statuses


def _run_one(k: int, st: FileStatus, statuses, pipeline, resume: bool, overwrite: bool, log, cancel: Cancel, options: dict) -> None:
    """File ``k`` of the run: skipped, failed (reported, the run goes on) or done."""
    log(
        f"[{k + 1}/{len(statuses)}] {st.input} -> {st.output}" + (f" ({st.read_ahead / 2**20:.0f} MiB read ahead)" if st.read_ahead else "")
    )
    if st.output.exists() and not overwrite:
        if resume and is_finished_output(st.output):
            st.status, st.reason = "skipped", "finished by an earlier run (resume)"
            log(f"  skipped: {st.reason}")
            return
        what = "an unfinished or foreign file" if resume else "it exists"
        st.status, st.problem = "failed", "output"
        st.reason = f"{st.output.name}: {what}; give --overwrite to replace it" + (
            "" if resume else " (or --resume to skip finished outputs)"
        )
        log(f"  failed: {st.reason}")
        return
    t0 = time.perf_counter()
    try:
        cancel.check()
        res = preprocess_file(st.input, st.output, pipeline=pipeline, overwrite=overwrite, log=log, cancel=cancel, **options)
    except Interrupted:
        st.status, st.reason = "interrupted", "its output was removed"
        log(status_table(statuses))
        raise
    except InputError as e:
        st.status, st.reason, st.problem = "failed", str(e), "input"
    except (OutputError, StreamError, OSError) as e:
        st.status, st.reason, st.problem = "failed", str(e), "output"
    else:
        st.status, st.result = "done", res
        st.frames, st.flagged = res.frames, _flagged(res)
    st.seconds = time.perf_counter() - t0
    if st.status == "failed":
        log(f"  failed: {st.reason}")


def status_table(statuses: list[FileStatus]) -> str:
    """The run's summary: one Markdown row per file (status, frames, frames/s end to end,
    frames with a flag)."""
    counts = {k: sum(s.status == k for s in statuses) for k in ("done", "skipped", "failed", "interrupted", "pending")}
    lines = [
        f"\n{len(statuses)} files: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("done", "failed")),
        "| file | status | frames | frames/s (end to end) | flagged frames | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in statuses:
        rate = format_rate(s.frames_per_s) if s.status == "done" else ""
        frames = str(s.frames) if s.status == "done" else ""
        flagged = str(s.flagged) if s.status == "done" else ""
        note = s.reason.replace("|", "/").splitlines()[0][:160] if s.reason else s.output.name
        lines.append(f"| {s.input.name} | {s.status} | {frames} | {rate} | {flagged} | {note} |")
    return "\n".join(lines)
