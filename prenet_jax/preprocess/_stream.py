"""Streaming pass 1: every frame of a file through the pipeline's compiled step,
with bounded host memory and reading, computing and writing overlapped.

::

    reader thread ──blocks──▶ main thread ──results──▶ writer thread
    (chunk-aligned reads)     batches of B frames      block buffers → EMDWriter
                              device_put (async)       (chunks compressed in a pool)
                              pipe._step + _post
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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..ops._centers import com_center
from ..io._readers import InputError, Source, plan_blocks
from ..pipeline._pipeline import FLAG_EMPTY, FLAG_NONFINITE, Pipeline
from ..pipeline._validate import host_dtype

__all__ = ["FLAG_SATURATED", "FLAG_NEGATIVE", "FLAG_NAMES", "FLAGS_EXCLUDED", "StreamStats", "stream", "output_dtype_for"]

FLAG_SATURATED = 4  # a pixel reached the saturation level (detector count limit)
FLAG_NEGATIVE = 8  # negative pixels (e.g. dark-subtracted data): treated as zero counts
FLAG_NAMES = {FLAG_NONFINITE: "NaN/Inf pixels", FLAG_EMPTY: "empty", FLAG_SATURATED: "saturated", FLAG_NEGATIVE: "negative pixels"}
#: Frames with these flags are kept out of the mean patterns and the centre statistics.
FLAGS_EXCLUDED = FLAG_NONFINITE | FLAG_EMPTY


@dataclasses.dataclass
class StreamStats:
    """What pass 1 measured.

    Attributes
    ----------
    centers : (Rx, Ry, 2) float64 beam centre ``(row, col)`` found in each input frame
    centers_after : (Rx, Ry, 2) float64 centre of mass of each corrected frame
    flags : (Rx, Ry) uint8 bit mask (``FLAG_*``)
    mean_before, mean_after : (H, W) float64 mean input / corrected pattern over
        the frames not in ``FLAGS_EXCLUDED``
    n_good : frames in the means
    raw_min, raw_max : extreme finite input values
    seconds : ``wall``, ``read`` (reader busy), ``write`` (writer busy),
        ``compute`` (main thread neither starved by the reader nor held by the writer)
    """

    centers: np.ndarray
    centers_after: np.ndarray
    flags: np.ndarray
    mean_before: np.ndarray
    mean_after: np.ndarray
    n_good: int
    raw_min: float
    raw_max: float
    seconds: dict


def output_dtype_for(name: str, input_dtype) -> np.dtype:
    """``"float32"`` | ``"input"`` (the input's dtype) | a numpy integer dtype name."""
    dt = np.dtype(input_dtype) if name == "input" else np.dtype(name)
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


@functools.lru_cache(maxsize=16)
def _make_post(out_dtype: np.dtype):
    """Jitted per-batch bookkeeping on the device, next to the step's outputs:
    extra flags, the sums for the mean patterns, the centre of mass of the corrected
    frames, and the cast to the output dtype (an integer output crosses the bus at
    its own size)."""
    kind = out_dtype.kind
    dev_dtype = jnp.dtype(out_dtype) if (kind in "iu" and out_dtype.itemsize <= 4) else jnp.float32
    lim = _int_limits(out_dtype) if kind in "iu" else None

    def post(raw, corrected, flags, valid, sat_level):
        x = raw.astype(jnp.float32)
        finite = jnp.isfinite(x)
        xz = jnp.where(finite, x, 0.0)
        neg = (xz < 0).any(axis=(-2, -1))
        sat = (xz >= sat_level).any(axis=(-2, -1))
        flags = flags | jnp.where(sat, FLAG_SATURATED, 0).astype(jnp.uint8) | jnp.where(neg, FLAG_NEGATIVE, 0).astype(jnp.uint8)
        good = valid & ((flags & FLAGS_EXCLUDED) == 0)
        w = good.astype(jnp.float32)
        hi = jax.lax.Precision.HIGHEST
        sum_raw = jnp.einsum("b,bhw->hw", w, jnp.maximum(xz, 0.0), precision=hi)
        sum_out = jnp.einsum("b,bhw->hw", w, corrected, precision=hi)
        # no blur: the output is already denoised (or the user chose not to), and a blur per
        # frame would cost as much as the step itself on a CPU
        com_after = jax.vmap(functools.partial(com_center, blur=0.0))(corrected)
        vmask = valid[:, None, None] & finite
        lo_v = jnp.min(jnp.where(vmask, xz, jnp.inf))
        hi_v = jnp.max(jnp.where(vmask, xz, -jnp.inf))
        if lim is not None:
            out = jnp.clip(jnp.round(corrected), lim[0], lim[1]).astype(dev_dtype)
        else:
            out = corrected.astype(jnp.float32)
        return out, flags, sum_raw, sum_out, w.sum(), com_after, lo_v, hi_v

    return jax.jit(post)


def _put(q: queue.Queue, item, stop: threading.Event) -> float:
    """Put with back-pressure that still notices ``stop``; returns seconds blocked."""
    t0 = time.perf_counter()
    while True:
        try:
            q.put(item, timeout=0.1)
            return time.perf_counter() - t0
        except queue.Full:
            if stop.is_set():
                raise _Stopped()


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped()


class _Stopped(Exception):
    pass


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
) -> StreamStats:
    """Run every frame of ``source`` through ``pipe``'s compiled step into ``writer``.

    Parameters
    ----------
    source : the input cube (Rx, Ry, H, W)
    pipe : the pipeline (its ``_step`` is the one compiled program per batch)
    matrix : (2, 2) ellipse distortion to undo (identity for none)
    writer : an :class:`prenet_jax.io._readers.EMDWriter` (or anything with ``chunk_cols``
        and ``write_block(i0, j0, block)``)
    out_dtype : dtype of the stored cube (integers: rounded and clipped to range)
    saturation : pixel value at or above which a frame is flagged saturated; None: never
    negative : ``"clip"`` (flag the frame, treat negatives as 0) or ``"error"``
    block_bytes : target size of one read (aligned to the storage chunks)
    inflight : batches queued on the device before the oldest is collected
    read_ahead, write_queue : bounds of the two queues between the threads
    progress : called with the number of frames finished
    """
    rx, ry, h, w = source.shape
    n_total = rx * ry
    b = pipe.batch_size
    hdt = host_dtype(source.dtype)
    blocks = plan_blocks(source.shape, source.scan_chunks, writer.chunk_cols, source.frame_bytes, block_bytes)
    sizes = [(i1 - i0) * (j1 - j0) for i0, i1, j0, j1 in blocks]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # processing position -> flat scan index (row-major within each block)
    flat = np.empty(n_total, np.int64)
    for (i0, i1, j0, j1), s in zip(blocks, starts[:-1]):
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
        flat[s : s + (i1 - i0) * (j1 - j0)] = (ii * ry + jj).reshape(-1)

    post = _make_post(np.dtype(out_dtype))  # cached: compiled once per dtype and shape
    matrix_dev = jax.device_put(jnp.asarray(matrix, jnp.float32), pipe._repl)
    sat = jax.device_put(jnp.float32(np.inf if saturation is None else saturation), pipe._repl)
    valid_full = jax.device_put(np.ones(b, bool), pipe._data)

    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=read_ahead)
    q_out: queue.Queue = queue.Queue(maxsize=write_queue)
    errors: list[BaseException] = []
    secs = {"read": 0.0, "write": 0.0}

    centers = np.full((n_total, 2), np.nan)
    centers_after = np.full((n_total, 2), np.nan)
    flags_all = np.zeros(n_total, np.uint8)
    acc = {"raw": np.zeros((h, w)), "out": np.zeros((h, w)), "n": 0.0, "min": np.inf, "max": -np.inf}

    def reader():
        try:
            for k, (i0, i1, j0, j1) in enumerate(blocks):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    arr = source.read_block(i0, i1, j0, j1)
                except Exception as e:
                    raise InputError(f"reading scan rows {i0}:{i1}, columns {j0}:{j1} of {source._what()} failed: {e}") from e
                arr = np.asarray(arr).reshape(-1, h, w).astype(hdt, copy=False)
                secs["read"] += time.perf_counter() - t0
                _put(q_in, (k, arr), stop)
            _put(q_in, None, stop)
        except _Stopped:
            pass
        except BaseException as e:
            errors.append(e)
            stop.set()

    open_blocks: dict[int, list] = {}

    def write_result(pos0: int, n: int, out: np.ndarray) -> None:
        # scatter the batch into the output blocks it overlaps; store complete ones
        k = bisect.bisect_right(starts, pos0) - 1
        p = pos0
        while p < pos0 + n:
            i0, i1, j0, j1 = blocks[k]
            s0, s1 = int(starts[k]), int(starts[k + 1])
            if k not in open_blocks:
                open_blocks[k] = [np.empty((s1 - s0, h, w), writer.dtype), 0]
            e = min(s1, pos0 + n)
            buf = open_blocks[k]
            buf[0][p - s0 : e - s0] = out[p - pos0 : e - pos0]
            buf[1] += e - p
            if buf[1] == s1 - s0:
                writer.write_block(i0, j0, buf[0].reshape(i1 - i0, j1 - j0, h, w))
                del open_blocks[k]
            p = e
            k += 1

    def writer_loop():
        try:
            while True:
                item = _get(q_out, stop)
                if item is None:
                    return
                t0 = time.perf_counter()
                pos0, n, out, c, fl, s_raw, s_out, cnt, com_a, lo, hi = item
                idx = flat[pos0 : pos0 + n]
                centers[idx] = c[:n]
                centers_after[idx] = com_a[:n]
                flags_all[idx] = fl[:n]
                acc["raw"] += s_raw
                acc["out"] += s_out
                acc["n"] += float(cnt)
                acc["min"] = min(acc["min"], float(lo))
                acc["max"] = max(acc["max"], float(hi))
                write_result(pos0, n, out[:n])
                secs["write"] += time.perf_counter() - t0
        except _Stopped:
            pass
        except BaseException as e:
            errors.append(e)
            stop.set()

    t_start = time.perf_counter()
    threads = [threading.Thread(target=reader, name="prenet-reader", daemon=True), threading.Thread(target=writer_loop, name="prenet-writer", daemon=True)]
    for t in threads:
        t.start()
    pending: collections.deque = collections.deque()
    wait_in = wait_out = 0.0

    def check():
        if errors:
            raise errors[0]

    def dispatch(host: np.ndarray, n: int, pos0: int) -> None:
        dev = jax.device_put(host, pipe._data)
        corrected, cen, fl = pipe._step(pipe.params, dev, matrix_dev)
        valid = valid_full if n == b else jax.device_put(np.arange(b) < n, pipe._data)
        res = (cen,) + tuple(post(dev, corrected, fl, valid, sat))
        for r in res:
            r.copy_to_host_async()
        pending.append((pos0, n, res))

    def retire() -> float:
        pos0, n, res = pending.popleft()
        cen, out, fl, s_raw, s_out, cnt, com_a, lo, hi = (np.asarray(r) for r in res)
        if negative == "error" and (fl[:n] & FLAG_NEGATIVE).any():
            raise InputError(f"{source._what()} has negative pixels (min {float(lo):.4g}); use --negative clip to treat them as zero counts (dark-subtracted data)")
        blocked = _put(q_out, (pos0, n, out, cen, fl, s_raw, s_out, cnt, com_a, lo, hi), stop)
        if progress is not None:
            progress(n)
        return blocked

    try:
        host = np.empty((b, h, w), hdt)
        fill, pos = 0, 0
        while True:
            t0 = time.perf_counter()
            item = _get(q_in, stop)
            wait_in += time.perf_counter() - t0
            check()
            if item is None:
                break
            _, arr = item
            k, n = 0, arr.shape[0]
            while k < n:
                take = min(b - fill, n - k)
                host[fill : fill + take] = arr[k : k + take]
                fill += take
                k += take
                if fill == b:
                    dispatch(host, b, pos)
                    pos += b
                    host = np.empty((b, h, w), hdt)  # the device may still read the old buffer
                    fill = 0
                    while len(pending) > inflight:
                        wait_out += retire()
                        check()
        if fill:
            host[fill:] = 0
            dispatch(host, fill, pos)
            pos += fill
        while pending:
            wait_out += retire()
            check()
        _put(q_out, None, stop)
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.1)
                check()
        check()
    except _Stopped:
        check()
        raise RuntimeError("streaming stopped unexpectedly")
    except BaseException:
        stop.set()
        for t in threads:
            t.join(timeout=5.0)
        if errors and not isinstance(errors[0], _Stopped):
            raise errors[0]
        raise
    finally:
        stop.set()
    wall = time.perf_counter() - t_start
    if open_blocks:
        raise RuntimeError(f"internal error: {len(open_blocks)} output blocks were left incomplete")
    n_good = int(round(acc["n"]))
    denom = max(n_good, 1)
    shp = (rx, ry)
    return StreamStats(
        centers=centers.reshape(shp + (2,)),
        centers_after=centers_after.reshape(shp + (2,)),
        flags=flags_all.reshape(shp),
        mean_before=acc["raw"] / denom,
        mean_after=acc["out"] / denom,
        n_good=n_good,
        raw_min=float(acc["min"]),
        raw_max=float(acc["max"]),
        seconds={"wall": wall, "read": secs["read"], "write": secs["write"], "compute": max(wall - wait_in - wait_out, 0.0)},
    )
