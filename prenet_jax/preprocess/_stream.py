"""Streaming pass 1: every frame of a file through the pipeline's compiled step,
with bounded host memory and reading, computing and writing overlapped.

::

    reader thread ──blocks──▶ main thread ──results──▶ writer thread
    (chunk-aligned reads)     batches of B frames      block buffers → EMDWriter
                              device_put (async)       (chunks compressed in a pool)
                              pipe.step_fn + make_post
                              copy_to_host_async
                              ``inflight`` batches queued on the device

Host memory is bounded by the queues: ``read_ahead`` input blocks, ``inflight``
batches on the device, ``write_queue`` results and the output blocks being
filled, whatever the size of the cube.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..conventions import EDGE_LOSS_FLAG, FLAG_EDGE, FLAG_EMPTY, FLAG_NAMES, FLAG_NEGATIVE, FLAG_NO_BEAM, FLAG_SATURATED, FLAGS_EXCLUDED
from ..io import InputError, OutputError, Source, negative_error, output_error, plan_blocks
from ..ops import com_center, direct_beam_found, frame_center, refine_center
from ..pipeline import Pipeline, frame_sigma, host_dtype
from ._cancel import Cancel, Interrupted

__all__ = [
    "FLAG_SATURATED",
    "FLAG_NEGATIVE",
    "FLAG_NAMES",
    "FLAGS_EXCLUDED",
    "StreamError",
    "StreamStats",
    "stream",
    "output_dtype_for",
    "make_post",
    "lost_fraction",
]


@dataclasses.dataclass
class StreamStats:
    """What pass 1 measured.

    Attributes
    ----------
    centers : (Rx, Ry, 2) float64 beam centre ``(row, col)`` found in each input frame
    centers_after : (Rx, Ry, 2) float64 centre of mass of each corrected frame
    friedel_after : (Rx, Ry, 2) float64 Friedel-symmetry centre of each corrected frame
        (NaN where that fit failed): a check of a different kind than the centre of mass
    lost : (Rx, Ry) float64 fraction of each frame's counts the warp moved out of the
        output frame (flagged ``FLAG_EDGE`` above ``EDGE_LOSS_FLAG``)
    flags : (Rx, Ry) uint8 bit mask (``FLAG_*``)
    mean_before, mean_after : (H, W) float64 mean input / corrected pattern over
        the frames not in ``FLAGS_EXCLUDED``
    n_good : frames in the means
    raw_min, raw_max : extreme finite input values
    seconds : ``wall``, ``read`` (reader busy), ``write`` (writer busy),
        ``compute`` (main thread neither starved by the reader nor held by the writer)
    counts : (Rx, Ry) float64 total counts of each input frame (negatives and
        NaN/Inf as 0): the dose
    sigmas : (Rx, Ry) float64 width (px) the dose-adaptive Gaussian denoiser gave each
        frame (:func:`prenet_jax.pipeline._gaussian.frame_sigma`), or None when the
        pipeline does not use it
    """

    centers: np.ndarray
    centers_after: np.ndarray
    friedel_after: np.ndarray
    lost: np.ndarray
    flags: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray
    n_good: int
    raw_min: float
    raw_max: float
    seconds: dict
    counts: np.ndarray | None = None
    sigmas: np.ndarray | None = None


def output_dtype_for(name: str, input_dtype) -> np.dtype:
    """The dtype an output file is written in.

    Parameters
    ----------
    name : ``"float32"``, ``"input"`` (the input's dtype) or a numpy integer dtype name
    input_dtype : the input's dtype

    Returns
    -------
    The dtype in the machine's byte order.

    Raises
    ------
    InputError : ``name`` is not a float or integer dtype
    """
    dt = np.dtype(input_dtype) if name == "input" else np.dtype(name)
    dt = dt.newbyteorder("=")  # a big-endian input is written in the machine's order
    if dt.kind not in "iuf":
        raise InputError(f"output dtype {dt}: use float32, input, or an integer type such as uint16")
    return dt


def _int_limits(dt: np.dtype) -> tuple[float, float]:
    """Clip range for rounding float32 into ``dt`` without overflow in the cast."""
    info = np.iinfo(dt)
    hi = np.float32(info.max)
    if float(hi) > info.max:  # e.g. uint32 max rounds up to 2**32 in float32
        hi = np.nextafter(hi, np.float32(0))
    return float(info.min), float(hi)


#: Side (px) of the window the independent Friedel check of the output reads (capped by the frame).
CHECK_WINDOW = 64


def lost_fraction(counts: jax.Array, center: jax.Array, matrix: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Fraction of a frame's counts that the warp moves out of the output frame.

    Output pixel ``q`` reads the input at ``center + D (q - c0)``
    (:func:`prenet_jax.ops.recenter_and_correct`), so input pixel ``p`` lands at
    ``c0 + D^-1 (p - center)``; the counts of the pixels that land outside
    ``[-0.5, H_out - 0.5) x [-0.5, W_out - 0.5)`` are lost.

    Parameters
    ----------
    counts : (H, W) counts >= 0 of the frame the step warps
    center : (2,) its beam centre
    matrix : (2, 2) the distortion matrix ``D``
    out_shape : the output frame's ``(H_out, W_out)``
    """
    h, w = counts.shape
    ho, wo = out_shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    inv = jnp.linalg.inv(matrix)
    dr, dc = rows - center[0], cols - center[1]
    qr = (ho - 1) / 2.0 + inv[0, 0] * dr + inv[0, 1] * dc
    qc = (wo - 1) / 2.0 + inv[1, 0] * dr + inv[1, 1] * dc
    outside = (qr < -0.5) | (qr >= ho - 0.5) | (qc < -0.5) | (qc >= wo - 0.5)
    total = counts.sum()
    return jnp.where(total > 0, jnp.where(outside, counts, 0.0).sum() / jnp.where(total > 0, total, 1.0), 0.0)


@functools.lru_cache(maxsize=16)
def make_post(out_dtype: np.dtype, with_sigma: bool = False):
    """The jitted per-batch bookkeeping that pass 1 runs on the device after the step.

    It adds the saturation, negative-pixel and edge-loss flags, sums the frames for
    the mean patterns, measures the beam centre of each corrected frame twice (centre
    of mass and Friedel symmetry, so that one of them is independent of the step's
    estimator), and casts the frames to the output dtype on the device (an integer
    output crosses the bus at its own size). Cached: one compiled function per
    ``(out_dtype, with_sigma)`` and batch shape.

    Parameters
    ----------
    out_dtype : the output file's dtype (:func:`output_dtype_for`)
    with_sigma : also return the width the dose-adaptive Gaussian gave each frame

    Returns
    -------
    post : ``post(raw, corrected, centers, flags, valid, sat_level, matrix)`` with
        ``raw`` the batch as the step saw it, ``corrected, centers, flags`` from
        :attr:`prenet_jax.Pipeline.step_fn`, ``valid`` (B,) bool (False for padding),
        ``sat_level`` the saturation threshold and ``matrix`` the distortion undone;
        returns a dict: ``out`` (the frames in the output dtype), ``flags``,
        ``sum_raw``, ``sum_out``, ``n_good``, ``com_after`` (centre of mass of each
        corrected frame), ``friedel_after`` (its Friedel-symmetry centre; NaN where
        that fit failed), ``lost`` (fraction of the counts moved out of the frame),
        ``raw_min``, ``raw_max``, ``counts``, ``sigma``
    """
    kind = out_dtype.kind
    dev_dtype = jnp.dtype(out_dtype) if (kind in "iu" and out_dtype.itemsize <= 4) else jnp.float32
    lim = _int_limits(out_dtype) if kind in "iu" else None

    def post(raw, corrected, centers, flags, valid, sat_level, matrix):
        x = raw.astype(jnp.float32)
        finite = jnp.isfinite(x)
        xz = jnp.where(finite, x, 0.0)
        counts = jnp.maximum(xz, 0.0)  # what the step sees (negatives and NaN/Inf as 0)
        neg = (xz < 0).any(axis=(-2, -1))
        sat = (xz >= sat_level).any(axis=(-2, -1))
        out_shape = corrected.shape[-2:]
        lost = jax.vmap(lost_fraction, in_axes=(0, 0, None, None))(counts, centers, matrix, out_shape)
        flags = (
            flags
            | jnp.where(sat, FLAG_SATURATED, 0).astype(jnp.uint8)
            | jnp.where(neg, FLAG_NEGATIVE, 0).astype(jnp.uint8)
            | jnp.where(lost > EDGE_LOSS_FLAG, FLAG_EDGE, 0).astype(jnp.uint8)
        )
        # an empty frame is flagged as such; any other frame without a direct beam has no beam centre
        no_beam = ~jax.vmap(direct_beam_found)(counts) & ((flags & FLAG_EMPTY) == 0)
        flags = flags | jnp.where(no_beam, FLAG_NO_BEAM, 0).astype(jnp.uint8)
        good = valid & ((flags & FLAGS_EXCLUDED) == 0)
        w = good.astype(jnp.float32)
        hi = jax.lax.Precision.HIGHEST
        # no blur: the output is already denoised (or the user chose not to), and a blur per
        # frame would cost as much as the step itself on a CPU
        com_after = jax.vmap(functools.partial(com_center, blur=0.0))(corrected)
        # The Friedel centre of the output, from the frame centre: a measure of a different
        # kind (symmetry, not mass), so it checks a CoM-centred output independently.
        c0 = jnp.asarray(frame_center(out_shape), jnp.float32)
        window = min(CHECK_WINDOW, 2 * (min(out_shape) // 2))
        fr, ok = jax.vmap(lambda f: refine_center(f, c0, window=window, steps=4, smooth=1.0))(corrected)
        vmask = valid[:, None, None] & finite
        total = counts.sum(axis=(-2, -1))
        out = jnp.clip(jnp.round(corrected), lim[0], lim[1]).astype(dev_dtype) if lim is not None else corrected.astype(jnp.float32)
        return {
            "out": out,
            "flags": flags,
            "sum_raw": jnp.einsum("b,bhw->hw", w, counts, precision=hi),
            "sum_out": jnp.einsum("b,bhw->hw", w, corrected, precision=hi),
            "n_good": w.sum(),
            "com_after": com_after,
            "friedel_after": jnp.where(ok[:, None], fr, jnp.nan),
            "lost": lost,
            "raw_min": jnp.min(jnp.where(vmask, xz, jnp.inf)),
            "raw_max": jnp.max(jnp.where(vmask, xz, -jnp.inf)),
            "counts": total,
            "sigma": frame_sigma(counts) if with_sigma else jnp.zeros_like(total),  # as in the step
        }

    return jax.jit(post)


class _Stopped(Exception):
    """A queue wait gave up because the run is stopping (an error elsewhere or a signal)."""


class StreamError(RuntimeError):
    """A worker of pass 1 failed for a reason that is neither the input nor the output
    (those raise :class:`prenet_jax.io.InputError` / :class:`prenet_jax.io.OutputError`):
    the message names the worker, the frames and the error. Nothing is left behind."""


def _put(q: queue.Queue, item, stopping: Callable[[], bool]) -> float:
    """Put with back-pressure that still notices ``stopping()``; returns seconds blocked."""
    t0 = time.perf_counter()
    while True:
        try:
            q.put(item, timeout=0.1)
            return time.perf_counter() - t0
        except queue.Full:
            if stopping():
                raise _Stopped() from None


def _get(q: queue.Queue, stopping: Callable[[], bool]):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stopping():
                raise _Stopped() from None


def stream(
    source: Source,
    pipe: Pipeline,
    matrix: np.ndarray,
    writer,
    *,
    out_dtype: np.dtype,
    saturation: float | None = None,
    negative: str = "clip",
    block_bytes: int = 32 << 20,
    inflight: int = 2,
    read_ahead: int = 2,
    write_queue: int = 4,
    progress: Callable[[int], None] | None = None,
    cancel: Cancel | None = None,
    pad: int = 0,
    centers: np.ndarray | None = None,
    flags: np.ndarray | None = None,
) -> StreamStats:
    """Run every frame of ``source`` through ``pipe``'s compiled step into ``writer``.

    Parameters
    ----------
    source : the input cube (Rx, Ry, H, W)
    pipe : the pipeline (its ``_step`` is the one compiled program per batch)
    matrix : (2, 2) ellipse distortion to undo (identity for none)
    writer : an :class:`prenet_jax.io.EMDWriter` (or anything with ``chunk_cols``,
        ``dtype``, ``path`` and ``write_block(i0, j0, block)``)
    out_dtype : dtype of the stored cube (integers: rounded and clipped to range)
    saturation : pixel value at or above which a frame is flagged saturated; None: never
    negative : ``"clip"`` (flag the frame, treat negatives as 0) or ``"error"``
    block_bytes : target size of one read (aligned to the storage chunks)
    inflight : batches queued on the device before the oldest is collected
    read_ahead, write_queue : bounds of the two queues between the threads
    progress : called with the number of frames finished
    cancel : the run's stop flag (:class:`prenet_jax.preprocess._cancel.Cancel`): the
        reader, compute and writer loops stop when it is set, and
        :class:`~prenet_jax.preprocess._cancel.Interrupted` is raised
    pad : px of zeros added on each side of every frame before the step, so that the
        output frames are ``(H + 2 pad, W + 2 pad)`` and a shift of up to ``pad`` px
        moves no count out of the frame; the centres found and ``mean_before`` are in
        the input's frame, ``mean_after`` and the after-centres in the output's
    centers : (Rx, Ry, 2) centres in the input's frame to warp each frame about (a
        descan model's, :func:`prenet_jax.preprocess._descan.centers_pass`): the step
        then denoises and warps, and finds no centre (:attr:`Pipeline.step_at_fn`);
        default: the step finds every centre
    flags : (Rx, Ry) uint8 flags to OR into the result's (those of the pass that found
        ``centers``)

    Raises
    ------
    InputError : the input cannot be read, changed while read, or (``negative="error"``)
        has negative pixels
    OutputError : writing failed (disk full, ...)
    StreamError : any other failure of the reader, the compute step or the writer
    Interrupted : ``cancel`` was set
    """
    return _Stream(
        source,
        pipe,
        matrix,
        writer,
        np.dtype(out_dtype),
        saturation,
        negative,
        block_bytes,
        inflight,
        read_ahead,
        write_queue,
        progress,
        cancel or Cancel(),
        pad,
        centers,
        flags,
    ).run()


def _scan_order(blocks: list, starts: np.ndarray, n_total: int, ry: int) -> np.ndarray:
    """Processing position -> flat scan index (row-major within each block)."""
    flat = np.empty(n_total, np.int64)
    for (i0, i1, j0, j1), s in zip(blocks, starts[:-1]):
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        flat[s : s + (i1 - i0) * (j1 - j0)] = (ii * ry + jj).reshape(-1)
    return flat


class _Stream:
    """One pass 1: the reader and writer threads and the main (compute) loop.

    Errors of a thread are kept in ``errors`` and stop the others through ``stop``;
    the main thread re-raises the first one. ``cancel`` (a signal) stops all three.
    """

    def __init__(
        self,
        source,
        pipe,
        matrix,
        writer,
        out_dtype,
        saturation,
        negative,
        block_bytes,
        inflight,
        read_ahead,
        write_queue,
        progress,
        cancel,
        pad=0,
        given=None,
        prior_flags=None,
    ):
        self.source, self.pipe, self.writer = source, pipe, writer
        self.negative, self.inflight, self.progress, self.cancel = negative, inflight, progress, cancel
        self.pad = int(pad)
        rx, ry, h, w = source.shape
        ho, wo = h + 2 * self.pad, w + 2 * self.pad
        self.n_total = rx * ry
        self.b = pipe.batch_size
        self.hdt = host_dtype(source.dtype)
        self.blocks = plan_blocks(source.shape, source.scan_chunks, writer.chunk_cols, source.frame_bytes, block_bytes)
        sizes = [(i1 - i0) * (j1 - j0) for i0, i1, j0, j1 in self.blocks]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.flat = _scan_order(self.blocks, self.starts, self.n_total, ry)
        # given centres, in the padded frame and in processing order (one batch is a slice)
        self.given = None if given is None else (np.asarray(given, np.float32).reshape(-1, 2)[self.flat] + self.pad)
        self.prior_flags = None if prior_flags is None else np.asarray(prior_flags, np.uint8).reshape(-1)

        cfg = pipe.config
        self.auto_sigma = cfg.denoise_method == "gaussian" and cfg.gaussian_sigma is None
        self.post = make_post(out_dtype, self.auto_sigma)  # cached: compiled once per dtype and shape
        self.matrix_dev = jax.device_put(jnp.asarray(matrix, jnp.float32), pipe.replicated)
        self.sat = jax.device_put(jnp.float32(np.inf if saturation is None else saturation), pipe.replicated)
        self.valid_full = jax.device_put(np.ones(self.b, bool), pipe.data_sharding)

        self.stop = threading.Event()
        self.q_in: queue.Queue = queue.Queue(maxsize=read_ahead)
        self.q_out: queue.Queue = queue.Queue(maxsize=write_queue)
        self.errors: list[BaseException] = []
        self.secs = {"read": 0.0, "write": 0.0}
        self.wait_in = self.wait_out = 0.0
        self.pending: collections.deque = collections.deque()
        self.open_blocks: dict[int, list] = {}

        self.centers = np.full((self.n_total, 2), np.nan)
        self.centers_after = np.full((self.n_total, 2), np.nan)
        self.friedel_after = np.full((self.n_total, 2), np.nan)
        self.lost = np.zeros(self.n_total, np.float64)
        self.flags = np.zeros(self.n_total, np.uint8)
        self.counts = np.zeros(self.n_total, np.float64)
        self.sigmas = np.zeros(self.n_total, np.float64)
        self.acc = {"raw": np.zeros((ho, wo)), "out": np.zeros((ho, wo)), "n": 0.0, "min": np.inf, "max": -np.inf}

    # ---- shared
    def stopping(self) -> bool:
        return self.stop.is_set() or self.cancel.is_set()

    def _worker(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        def run():
            try:
                loop()
            except _Stopped:
                pass
            except BaseException as e:
                self.errors.append(self._classify(name, e))
                self.stop.set()

        t = threading.Thread(target=run, name=f"prenet-{name}", daemon=True)
        t.start()
        return t

    def _classify(self, name: str, e: BaseException) -> BaseException:
        """The error a worker's failure is reported as (see :func:`stream`)."""
        if isinstance(e, (InputError, OutputError, StreamError, Interrupted)):
            return e
        if name == "writer" and isinstance(e, OSError):
            return output_error(getattr(self.writer, "path", "the output"), "writing", e)
        err = StreamError(f"the {name} thread failed: {type(e).__name__}: {e}; nothing was written")
        err.__cause__ = e
        return err

    def _raise_if_stopped(self) -> None:
        self.cancel.check()
        if self.errors:
            raise self.errors[0]

    # ---- reader thread: chunk-aligned blocks of frames -> q_in
    def reader(self) -> None:
        h, w = self.source.shape[2:]
        for k, (i0, i1, j0, j1) in enumerate(self.blocks):
            if self.stopping():
                return
            t0 = time.perf_counter()
            arr = self.source.read_block(i0, i1, j0, j1)  # InputError on failure or a changed file
            arr = np.asarray(arr).reshape(-1, h, w).astype(self.hdt, copy=False)
            self.secs["read"] += time.perf_counter() - t0
            _put(self.q_in, (k, arr), self.stopping)
        _put(self.q_in, None, self.stopping)

    # ---- writer thread: results -> statistics and complete output blocks
    def writer_loop(self) -> None:
        while True:
            item = _get(self.q_out, self.stopping)
            if item is None:
                return
            t0 = time.perf_counter()
            pos0, n, r = item
            idx = self.flat[pos0 : pos0 + n]
            self.centers[idx] = r["centers"][:n] - self.pad  # in the input's coordinates
            self.centers_after[idx] = r["com_after"][:n]
            self.friedel_after[idx] = r["friedel_after"][:n]
            self.lost[idx] = r["lost"][:n]
            self.flags[idx] = r["flags"][:n] if self.prior_flags is None else r["flags"][:n] | self.prior_flags[idx]
            self.counts[idx] = r["counts"][:n]
            self.sigmas[idx] = r["sigma"][:n]
            acc = self.acc
            acc["raw"] += r["sum_raw"]
            acc["out"] += r["sum_out"]
            acc["n"] += float(r["n_good"])
            acc["min"] = min(acc["min"], float(r["raw_min"]))
            acc["max"] = max(acc["max"], float(r["raw_max"]))
            self._write_result(pos0, n, r["out"][:n])
            self.secs["write"] += time.perf_counter() - t0

    def _write_result(self, pos0: int, n: int, out: np.ndarray) -> None:
        """Scatter a batch into the output blocks it overlaps; store complete ones."""
        h, w = out.shape[1:]
        k = bisect.bisect_right(self.starts, pos0) - 1
        p = pos0
        while p < pos0 + n:
            i0, i1, j0, j1 = self.blocks[k]
            s0, s1 = int(self.starts[k]), int(self.starts[k + 1])
            if k not in self.open_blocks:
                self.open_blocks[k] = [np.empty((s1 - s0, h, w), self.writer.dtype), 0]
            e = min(s1, pos0 + n)
            buf = self.open_blocks[k]
            buf[0][p - s0 : e - s0] = out[p - pos0 : e - pos0]
            buf[1] += e - p
            if buf[1] == s1 - s0:
                self.writer.write_block(i0, j0, buf[0].reshape(i1 - i0, j1 - j0, h, w))
                del self.open_blocks[k]
                self.cancel.hold("stream")  # test hook: a partial output file exists now
            p = e
            k += 1

    # ---- main thread: batches -> the compiled step (asynchronous) -> q_out
    def dispatch(self, host: np.ndarray, n: int, pos0: int) -> None:
        pipe = self.pipe
        try:
            dev = jax.device_put(host, pipe.data_sharding)
            if self.given is None:
                corrected, cen, fl = pipe.step_fn(pipe.params, dev, self.matrix_dev)
            else:
                c = np.zeros((self.b, 2), np.float32)
                c[:n] = self.given[pos0 : pos0 + n]
                c[n:] = self.given[pos0]  # padding frames (zeros): any centre will do
                corrected, cen, fl = pipe.step_at_fn(pipe.params, dev, jax.device_put(c, pipe.data_sharding), self.matrix_dev)
            valid = self.valid_full if n == self.b else jax.device_put(np.arange(self.b) < n, pipe.data_sharding)
            res = dict(self.post(dev, corrected, cen, fl, valid, self.sat, self.matrix_dev), centers=cen)
            for r in res.values():
                r.copy_to_host_async()
        except Exception as e:
            raise self._compute_error(pos0, n, e) from e
        self.pending.append((pos0, n, res))

    def _compute_error(self, pos0: int, n: int, e: Exception) -> StreamError:
        text = str(e)
        hint = "; lower --batch-size" if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() else ""
        return StreamError(
            f"the compute step failed on frames {pos0}..{pos0 + n - 1} (in reading order): {type(e).__name__}: {text.splitlines()[0] if text else ''}{hint}; nothing was written"
        )

    def retire(self) -> None:
        """Collect the oldest batch in flight and queue it for the writer."""
        pos0, n, res = self.pending.popleft()
        try:
            res = {k: np.asarray(r) for k, r in res.items()}
        except Exception as e:  # a failure on the device surfaces when its results are fetched
            raise self._compute_error(pos0, n, e) from e
        if self.negative == "error" and (res["flags"][:n] & FLAG_NEGATIVE).any():
            raise negative_error(self.source._what(), float(res["raw_min"]))
        self.wait_out += _put(self.q_out, (pos0, n, res), self.stopping)
        if self.progress is not None:
            self.progress(n)

    def _next_block(self):
        t0 = time.perf_counter()
        item = _get(self.q_in, self.stopping)
        self.wait_in += time.perf_counter() - t0
        return item

    def _host_batch(self) -> np.ndarray:
        """A new host buffer for one batch (the device may still read the previous one);
        with ``pad`` its border is zero, and only the middle is ever filled."""
        b, (h, w), p = self.b, self.source.shape[2:], self.pad
        return np.zeros((b, h + 2 * p, w + 2 * p), self.hdt) if p else np.empty((b, h, w), self.hdt)

    def compute_loop(self) -> None:
        b, (h, w), p = self.b, self.source.shape[2:], self.pad
        host = self._host_batch()
        fill, pos, first = 0, 0, True
        while True:
            item = self._next_block()
            self._raise_if_stopped()
            if item is None:
                break
            _, arr = item
            k, n = 0, arr.shape[0]
            while k < n:
                take = min(b - fill, n - k)
                host[fill : fill + take, p : p + h, p : p + w] = arr[k : k + take]
                fill += take
                k += take
                if fill == b:
                    self._dispatch_first(host, b, pos) if first else self.dispatch(host, b, pos)
                    first = False
                    pos += b
                    host = self._host_batch()
                    fill = 0
                    while len(self.pending) > self.inflight:
                        self.retire()
                        self._raise_if_stopped()
        if fill:
            host[fill:] = 0
            self._dispatch_first(host, fill, pos) if first else self.dispatch(host, fill, pos)
        while self.pending:
            self.retire()
            self._raise_if_stopped()
        _put(self.q_out, None, self.stopping)

    def _dispatch_first(self, host: np.ndarray, n: int, pos0: int) -> None:
        """The first batch compiles the step (synchronously, in this thread): a signal
        arriving meanwhile is handled when the compiler returns."""
        self.cancel.phase = "compile"
        self.cancel.hold("compile")
        self.dispatch(host, n, pos0)
        self.cancel.check()
        self.cancel.phase = "stream"

    # ---- the whole pass
    def run(self) -> StreamStats:
        t_start = time.perf_counter()
        threads = [self._worker("reader", self.reader), self._worker("writer", self.writer_loop)]
        try:
            try:
                self.compute_loop()
                for t in threads:
                    while t.is_alive():
                        t.join(timeout=0.1)
                        self._raise_if_stopped()
            except _Stopped:
                self._raise_if_stopped()
                raise StreamError("streaming stopped without a reason (internal error); nothing was written") from None
            self._raise_if_stopped()
        except BaseException as e:
            # a thread's own error first: the main thread's may only be its consequence
            self._shutdown(threads)
            if self.errors and not isinstance(e, Interrupted) and self.errors[0] is not e:
                raise self.errors[0] from None
            raise
        self._shutdown(threads)
        wall = time.perf_counter() - t_start
        if self.open_blocks:
            raise StreamError(f"internal error: {len(self.open_blocks)} output blocks were left incomplete")
        return self._stats(wall)

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        """Stop and join the workers, so nothing touches the files after this returns.
        Each notices ``stop`` within 0.1 s or after the read or write it is doing."""
        self.stop.set()
        for t in threads:
            t.join()

    def _stats(self, wall: float) -> StreamStats:
        rx, ry, h, w = self.source.shape
        n_good = int(round(self.acc["n"]))
        denom = max(n_good, 1)
        shp = (rx, ry)
        return StreamStats(
            centers=self.centers.reshape(shp + (2,)),
            centers_after=self.centers_after.reshape(shp + (2,)),
            friedel_after=self.friedel_after.reshape(shp + (2,)),
            lost=self.lost.reshape(shp),
            flags=self.flags.reshape(shp),
            mean_before=self.acc["raw"][self.pad : self.pad + h, self.pad : self.pad + w] / denom,  # the input's frame
            mean_after=self.acc["out"] / denom,
            n_good=n_good,
            raw_min=float(self.acc["min"]),
            raw_max=float(self.acc["max"]),
            seconds={
                "wall": wall,
                "read": self.secs["read"],
                "write": self.secs["write"],
                "compute": max(wall - self.wait_in - self.wait_out, 0.0),
            },
            counts=self.counts.reshape(shp),
            sigmas=self.sigmas.reshape(shp) if self.auto_sigma else None,
        )
