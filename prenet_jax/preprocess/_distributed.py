"""One scan across several processes and hosts: ``prenet-jax preprocess --distributed``.

Every process runs this with the same arguments (SLURM ``srun``, ``mpirun``, or by hand
with ``--coordinator HOST:PORT --num-processes N --process-id I``)::

    jax.distributed.initialize()      the processes find each other (as training does)
    validate                          each opens the input read-only
    mask, pass 0                      on frames sampled across the WHOLE scan: each process
                                      reads the sampled frames in its own rows, and an
                                      all-gather gives every process all of them, so the
                                      mask and the ellipse are the same everywhere, and
                                      the same as one process finds
    pass 1                            each process streams its share of the scan rows
                                      into its part, OUTPUT.partKofN.h5 (written whole
                                      or not at all, like any output)
    gather                            the per-frame results (centres, flags, ...) and the
                                      sums of the mean patterns, all-gathered
    merge (process 0)                 one py4DSTEM-readable file: the parts' compressed
                                      chunks copied as stored (nothing decoded), then the
                                      record and the figures of the whole scan, the
                                      atomic rename, and the parts removed

Why a merge and not an HDF5 virtual dataset over the parts: the output is then one
self-contained file, which a user copies, archives or opens anywhere (a virtual
dataset breaks when the parts move), and the copy of compressed chunks costs about
what writing them once more costs (``benchmarks/RESULTS.md``).

An interrupted or failed run leaves no half output: each part and the final file are
atomic. A re-run with ``--resume`` keeps the parts that finished (their record holds
their results) and redoes the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from .._util import distributed_initialize
from ..io import EMDWriter, InputError, Source, read_result
from ._cancel import Cancel, Interrupted, catch_signals, redeliver
from ._stream import StreamStats

__all__ = ["initialize", "preprocess_distributed", "part_path", "row_shares"]


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> tuple[int, int]:
    """:func:`prenet_jax._util.distributed_initialize` with the CPU's collectives (gloo),
    its failure an :class:`InputError` that says how to start the processes. Returns
    ``(process_index, process_count)``."""
    try:
        return distributed_initialize(coordinator, num_processes, process_id, "gloo")
    except Exception as e:
        raise InputError(
            f"--distributed: jax.distributed.initialize failed ({type(e).__name__}: {e}); run under SLURM or mpirun, "
            "or give --coordinator HOST:PORT --num-processes N --process-id I to every process"
        ) from None


def row_shares(rows: int, processes: int) -> list[tuple[int, int]]:
    """Scan rows ``[i0, i1)`` of each process: contiguous, sizes differing by at most one."""
    edges = np.linspace(0, rows, processes + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def part_path(output: Path, k: int, n: int) -> Path:
    """Where process ``k`` of ``n`` writes its rows."""
    return output.with_name(f"{output.stem}.part{k + 1}of{n}.h5")


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data``, in process order (a collective: every process calls it).
    Sent as bytes: JAX would turn float64 into float32."""
    from jax.experimental import multihost_utils as mh

    sizes = np.asarray(mh.process_allgather(np.asarray([len(data)], np.int32), tiled=True)).reshape(-1)
    buf = np.zeros(int(sizes.max()) if sizes.size else 0, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    every = np.asarray(mh.process_allgather(buf, tiled=False))
    return [every[k, : int(n)].tobytes() for k, n in enumerate(sizes)]


def _pack(arrays: dict) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _unpack(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _RowSlice:
    """Scan rows ``i0:i1`` of a :class:`~prenet_jax.io.Source`, as a source of its own."""

    def __init__(self, source: Source, i0: int, i1: int):
        self._s, self.i0, self.i1 = source, i0, i1
        self.shape = (i1 - i0,) + tuple(source.shape[1:])

    def __getattr__(self, name):
        return getattr(self._s, name)

    @property
    def n_frames(self) -> int:
        return self.shape[0] * self.shape[1]

    def read_block(self, i0, i1, j0, j1):
        return self._s.read_block(i0 + self.i0, i1 + self.i0, j0, j1)

    def read_frames(self, index):
        return self._s.read_frames(np.asarray(index, np.int64) + self.i0 * self.shape[1])


class _Gathered:
    """The whole scan, read by all the processes together: each reads the frames of its
    own rows, and an all-gather hands every process all of them. :meth:`read_frames` is
    a collective: every process calls it with the same index (pass 0 and the bad-pixel
    search sample the same frames everywhere, so they do)."""

    def __init__(self, source: Source, rows: tuple[int, int]):
        self._s = source
        self._lo, self._hi = rows[0] * source.shape[1], rows[1] * source.shape[1]

    def __getattr__(self, name):
        return getattr(self._s, name)

    def read_frames(self, index):
        index = np.asarray(index, np.int64)
        mine = index[(index >= self._lo) & (index < self._hi)]
        local = self._s.read_frames(mine) if mine.size else np.zeros((0,) + tuple(self._s.shape[2:]), self._s.dtype)
        parts = [_unpack(b) for b in _allgather_bytes(_pack({"index": mine, "frames": np.ascontiguousarray(local)}))]
        idx = np.concatenate([p["index"] for p in parts])
        frames = np.concatenate([p["frames"] for p in parts])
        return frames[np.argsort(idx, kind="stable")]


_STATS = ("centers", "centers_after", "friedel_after", "lost", "flags", "counts", "sigmas")


def _stats_arrays(st: StreamStats) -> dict:
    """A part's results as arrays (the mean patterns as sums, so that parts add up)."""
    out = {k: np.asarray(getattr(st, k)) for k in _STATS if getattr(st, k) is not None}
    out.update(
        sum_before=np.asarray(st.mean_before, np.float64) * st.n_good,
        sum_after=np.asarray(st.mean_after, np.float64) * st.n_good,
        n_good=np.asarray(st.n_good),
        raw_min=np.asarray(st.raw_min),
        raw_max=np.asarray(st.raw_max),
        seconds=np.asarray([st.seconds.get(k, 0.0) for k in ("wall", "read", "write", "compute")]),
    )
    return out


def _merge_stats(parts: list[dict]) -> StreamStats:
    """The whole scan's :class:`StreamStats` from the parts' arrays, rows in order."""
    n_good = int(sum(int(p["n_good"]) for p in parts))
    denom = max(n_good, 1)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in _STATS if k in parts[0]}
    secs = np.max([p["seconds"] for p in parts], axis=0)  # the processes ran side by side
    return StreamStats(
        centers=cat["centers"],
        centers_after=cat["centers_after"],
        friedel_after=cat["friedel_after"],
        lost=cat["lost"],
        flags=cat["flags"],
        mean_before=sum(p["sum_before"] for p in parts) / denom,
        mean_after=sum(p["sum_after"] for p in parts) / denom,
        n_good=n_good,
        raw_min=float(min(float(p["raw_min"]) for p in parts)),
        raw_max=float(max(float(p["raw_max"]) for p in parts)),
        seconds=dict(zip(("wall", "read", "write", "compute"), map(float, secs))),
        counts=cat.get("counts"),
        sigmas=cat.get("sigmas"),
    )


def _run_key(job, cal, rows, n) -> str:
    """What a finished part must have been made with to be reused by ``--resume``."""
    src = job.source
    st = os.stat(src.path)
    key = {
        "input": str(Path(src.path).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns, "dataset": src.dataset or "",
        "config": job.config.to_dict(), "ellipse": [cal.ellipse.ratio, cal.ellipse.angle], "rows": list(rows), "parts": n,
        "pad": job.pad, "dtype": str(job.out_dtype), "compression": job.compression,
        "mask": "" if job.pipeline.mask is None else hashlib.sha1(np.packbits(job.pipeline.mask)).hexdigest(),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class _Part:
    path: Path
    stats: dict
    reused: bool


def _stream_part(job, cal, rows, k, n, resume, progress, cancel, log) -> _Part:
    """Pass 1 over this process's rows into its part (or the part a previous run finished)."""
    from ._provenance import output_calibration
    from ._run import _stream_pass

    path = part_path(job.output, k, n)
    key = _run_key(job, cal, rows, n)
    if path.exists():
        try:
            rec = read_result(path)["preprocessing"]
        except Exception:
            rec = {}
        if resume and rec.get("run_key") == key:
            log(f"part {k + 1} of {n} (rows {rows[0]}:{rows[1]}) finished by an earlier run: reused")
            return _Part(path, {name[5:]: np.asarray(v) for name, v in rec.items() if name.startswith("stat_")}, True)
        path.unlink()  # an older part of another run: this run writes its own
    full = job.source
    job.source = _RowSlice(full, *rows)
    writer = EMDWriter(path, job.out_shape, job.out_dtype, overwrite=False, compression=job.compression)
    try:
        st = _stream_pass(job, writer, cal, progress, cancel)
        stats = _stats_arrays(st)
        record = {"run_key": key, "rows": np.asarray(rows), **{f"stat_{name}": v for name, v in stats.items()}}
        writer.write_metadata(output_calibration(full.calibration, job.out_shape, None), record)
        writer.commit(before_rename=cancel.check)
    finally:
        if not writer.done:
            writer.abort()
        job.source = full
    return _Part(path, stats, False)


def _validated(input: Path, output: Path, log, fixed_ellipse: bool, **opts):
    """``preprocess_file``'s validation step with its defaults for what ``opts`` leaves out."""
    import inspect

    from ._run import _validate, preprocess_file

    takes = inspect.signature(_validate).parameters
    defaults = {k: v for k, v in preprocess_file.__kwdefaults__.items() if k in takes and k != "log"}
    return _validate(input, output, log=log, fixed_ellipse=fixed_ellipse, **{**defaults, **opts})


def preprocess_distributed(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    resume: bool = False,
    ellipse=None,
    checksum: bool = True,
    progress: bool = True,
    weights_id: str = "none (classical methods)",
    options: dict | None = None,
    log=print,
    cancel: Cancel | None = None,
    **opts,
):
    """:func:`~prenet_jax.preprocess.preprocess_file` with the scan's rows shared among
    the processes of a ``jax.distributed`` job (module docstring). Every process calls it
    with the same arguments; process 0 writes ``output`` and returns its
    :class:`~prenet_jax.preprocess.FileResult`, the others return None once it exists.

    Parameters
    ----------
    coordinator, num_processes, process_id : for :func:`initialize` (found by JAX under
        SLURM and Open MPI)
    resume : reuse the parts a previous, interrupted run finished
    opts : the other options of ``preprocess_file`` (``pipeline``, ``mask``, ``pad``,
        ...); ``descan`` is not supported yet (its fit needs every centre first)
    """
    if opts.get("descan"):  # before the processes meet: every one of them refuses alike
        raise InputError("--descan with --distributed is not supported yet: run the scan in one process, or without --descan")
    k, n = initialize(coordinator, num_processes, process_id)
    if n == 1:
        from ._run import preprocess_file

        return preprocess_file(
            input,
            output,
            ellipse=ellipse,
            checksum=checksum,
            progress=progress,
            weights_id=weights_id,
            options=options,
            log=log,
            cancel=cancel,
            **opts,
        )
    quiet = log if k == 0 else (lambda s: None)
    args = dict(ellipse=ellipse, checksum=checksum and k == 0, progress=progress and k == 0, weights_id=weights_id, options=options, **opts)
    if cancel is not None:
        return _distributed(Path(input), Path(output), k, n, resume, quiet, cancel, **args)
    cancel = Cancel()
    with catch_signals(cancel):
        try:
            return _distributed(Path(input), Path(output), k, n, resume, quiet, cancel, **args)
        except Interrupted as e:
            stopped = e
    redeliver(stopped)
    raise stopped


def _distributed(
    input: Path,
    output: Path,
    k: int,
    n: int,
    resume: bool,
    log,
    cancel: Cancel,
    *,
    ellipse,
    checksum,
    progress,
    weights_id,
    options,
    **opts,
):
    from jax.experimental import multihost_utils as mh

    from ._run import FileResult, _calibrate, _check, _Checksum, _finish, _mask, _summary, ellipse_to_py4dstem

    t_all = time.perf_counter()
    job = _validated(input, output, log, ellipse is not None, **opts)
    if job.config.denoise_method == "scan":  # a frame's window crosses the processes' rows
        job.source.close()
        raise InputError(
            "--denoise-method scan does not run with --distributed yet (a frame's scan neighbours lie in other processes' rows): "
            "run it in one process, or use --denoise-method gaussian"
        )
    if n > job.source.shape[0]:
        job.source.close()
        raise InputError(f"--distributed: {n} processes for {job.source.shape[0]} scan rows; use at most one process per row")
    shares = row_shares(job.source.shape[0], n)
    rows = shares[k]
    log(f"distributed: {n} processes, rows {', '.join(f'{a}:{b}' for a, b in shares)}; this is process {k}")
    writer: EMDWriter | None = None
    checks = None
    figures: list[Path] = []
    parts: list[Path] = []
    try:
        checks = _Checksum(input, cancel) if checksum else None
        full = job.source
        job.source = _Gathered(full, rows)  # the mask and pass 0 sample the whole scan
        masks = _mask(job, log)
        cancel.check()
        _check(job, log)  # the same frames and decision in every process
        cancel.check()
        cal = _calibrate(job, ellipse, progress, cancel, log)
        job.source = full
        part = _stream_part(job, cal, rows, k, n, resume, progress, cancel, log)
        every = [_unpack(b) for b in _allgather_bytes(_pack(part.stats))]  # also the barrier: every part is written
        parts = [part_path(output, q, n) for q in range(n)]
        st = _merge_stats(every)  # (Rx, Ry, ...): the parts' rows, in order
        done = None
        if k == 0:
            writer = EMDWriter(output, job.out_shape, job.out_dtype, overwrite=job.overwrite, compression=job.compression)
            t0 = time.perf_counter()
            copied = sum(writer.copy_rows_from(p, a) for p, (a, _) in zip(parts, shares))
            st.seconds["merge"] = time.perf_counter() - t0
            log(f"merge: {n} parts, {copied / 2**20:.1f} MiB of compressed chunks copied in {st.seconds['merge']:.1f} s")
            done = _finish(job, writer, st, cal, checks, weights_id, options, cancel, log, figures, None, masks)
            for p in parts:
                p.unlink(missing_ok=True)
        mh.sync_global_devices("prenet-jax preprocess: merged")
    finally:
        if checks is not None:
            checks.stop()
        if writer is not None and not writer.done:
            writer.abort()
            for p in figures:
                p.unlink(missing_ok=True)
        job.source.close()
    if k != 0:
        return None
    seconds = dict(st.seconds, pass0=cal.seconds, total=time.perf_counter() - t_all)
    lines = _summary(job, st, cal, done, seconds, None, masks)
    for line in lines:
        log(line)
    return FileResult(
        output=output, figures=done.figures, ellipse=cal.ellipse, ellipse_py4dstem=ellipse_to_py4dstem(cal.ellipse, done.radius),
        residual_ratio=done.residual, centers=st.centers, centers_after=st.centers_after, friedel_after=st.friedel_after,
        lost=st.lost, flags=st.flags, mean_before=st.mean_before, mean_after=st.mean_after, seconds=seconds,
        frames=job.source.n_frames, lines=lines, residual_angle=done.residual_angle, refinement=done.refinement, mask=masks,
    )  # fmt: skip
