"""``--descan``: a fitted model of the beam centre across the scan, on the file path.

A descan run makes one more pass over the file before pass 1::

    centres pass -> every frame denoised and its centre found (no warp, nothing written)
    noise        -> each frame's centre uncertainty: the estimator's noise, measured by
                    Poisson thinning of frames sampled across the scan and scaled by
                    each frame's counts (:meth:`prenet_jax.Pipeline.center_noise`)
    fit          -> :func:`prenet_jax.ops.fit_descan` over the scan (Huber IRLS weighted
                    by the uncertainties; frames flagged empty or non-finite left out);
                    outliers, judged by their own uncertainty, flagged FLAG_DESCAN
    pass 1       -> every frame warped about its chosen centre
                    (:attr:`prenet_jax.Pipeline.step_at_fn`)

The frames are read and denoised twice: holding a whole cube of denoised frames
between the passes, as :meth:`prenet_jax.Pipeline.preprocess` does in memory, would
take the output's size again on disk. With the classical denoiser the centres pass
costs about what reading the file costs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

from ..conventions import FLAG_DESCAN, FLAGS_EXCLUDED
from ..io import FrameView, InputError, Source, negative_error, plan_blocks
from ..ops import Descan, fit_descan
from ..pipeline import THINNING_FRAMES, Pipeline, frame_counts, host_dtype
from ._cancel import Cancel
from ._stream import _scan_order

__all__ = [
    "DESCAN_MODES",
    "DescanPass",
    "centers_pass",
    "descan_pass",
    "descan_lines",
    "descan_record",
    "scan_step_drift",
]

#: The modes of ``--descan`` (:func:`prenet_jax.ops.fit_descan`).
DESCAN_MODES = ("frame", "plane", "quadratic", "auto")

_USE = {
    "frame": "each frame's own centre (the model is only reported)",
    "plane": "the plane's centre for every frame",
    "quadratic": "the quadratic's centre for every frame",
}


@dataclasses.dataclass
class DescanPass:
    """What the centres pass and the fit found.

    Attributes
    ----------
    fit : the :class:`prenet_jax.ops.Descan`; ``fit.centers`` are the centres pass 1
        warps about, ``fit.model + fit.residuals`` the measured ones
    measured : (Rx, Ry, 2) float64 centre found in each input frame (NaN: none)
    flags : (Rx, Ry) uint8 flags of the centres pass, with ``FLAG_DESCAN`` on the
        outliers of the fit
    seconds : wall time of the pass and the fit
    noise : how the estimator noise ``fit.noise`` (each frame's centre uncertainty,
        which weights the fit) was found: ``"thinning"``
        (:meth:`prenet_jax.Pipeline.center_noise`) or ``"neighbours"`` (the fit's own
        estimate, one value for the map: data that are not counts)
    """

    fit: Descan
    measured: np.ndarray
    flags: np.ndarray
    seconds: float
    noise: str = "thinning"


def centers_pass(
    source: Source,
    pipe: Pipeline,
    *,
    negative: str = "clip",
    block_bytes: int = 32 << 20,
    progress: Callable[[int], None] | None = None,
    cancel: Cancel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The beam centre of every frame of ``source`` (denoised first, as in the step).

    Blocks are read in the order pass 1 reads them, the next one while the current
    one is computed; two batches are in flight on the device.

    Parameters
    ----------
    source : the input cube (Rx, Ry, H, W)
    pipe : the pipeline (its denoise, centre and centre-refinement stages run)
    negative : ``"clip"`` or ``"error"`` (raise :class:`InputError` on negative pixels)
    block_bytes : about how many bytes one read holds
    progress : called with the number of frames finished
    cancel : the run's stop flag, checked after every batch

    Returns
    -------
    ``(centers, flags, counts)``: (Rx, Ry, 2) float64 ``(row, col)`` in the input's
    frame, (Rx, Ry) uint8 (``FLAG_NONFINITE``, ``FLAG_EMPTY``, ``FLAG_REFINE``) and
    (Rx, Ry) float64 total counts of each frame (negatives and NaN/Inf as 0)
    """
    cancel = cancel or Cancel()
    rx, ry, h, w = source.shape
    n_total, b = rx * ry, pipe.batch_size
    blocks = plan_blocks(source.shape, source.scan_chunks, 1, source.frame_bytes, block_bytes)
    sizes = [(i1 - i0) * (j1 - j0) for i0, i1, j0, j1 in blocks]
    flat = _scan_order(blocks, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), n_total, ry)
    hdt = host_dtype(source.dtype)
    centers = np.full((n_total, 2), np.nan)
    flags = np.zeros(n_total, np.uint8)
    counts = np.zeros(n_total)
    pending: collections.deque = collections.deque()

    def read(k: int) -> np.ndarray:
        arr = np.asarray(source.read_block(*blocks[k])).reshape(-1, h, w)
        if negative == "error" and arr.dtype.kind in "if" and arr.size and np.nanmin(arr) < 0:
            raise negative_error(source._what(), float(np.nanmin(arr)))
        return arr.astype(hdt, copy=False)

    def retire() -> None:
        pos0, n, (c, fl) = pending.popleft()
        idx = flat[pos0 : pos0 + n]
        centers[idx], flags[idx] = np.asarray(c)[:n], np.asarray(fl)[:n]
        if progress is not None:
            progress(n)
        cancel.hold("centers")
        cancel.check()

    def dispatch(host: np.ndarray, n: int, pos0: int) -> None:
        pending.append((pos0, n, pipe._centers(pipe.params, jax.device_put(host, pipe.data_sharding))))
        if len(pending) > 1:
            retire()

    host, fill, pos = np.zeros((b, h, w), hdt), 0, 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prenet-centers-reader") as pool:
        ahead = pool.submit(read, 0)
        for k in range(len(blocks)):
            arr = ahead.result()  # InputError of the reader surfaces here
            if k + 1 < len(blocks):
                ahead = pool.submit(read, k + 1)
            cancel.check()
            i = 0
            while i < arr.shape[0]:
                take = min(b - fill, arr.shape[0] - i)
                host[fill : fill + take] = arr[i : i + take]
                counts[flat[pos + fill : pos + fill + take]] = frame_counts(arr[i : i + take])
                fill, i = fill + take, i + take
                if fill == b:
                    dispatch(host, b, pos)
                    host, fill, pos = np.zeros((b, h, w), hdt), 0, pos + b
        if fill:
            dispatch(host, fill, pos)
        while pending:
            retire()
    return centers.reshape(rx, ry, 2), flags.reshape(rx, ry), counts.reshape(rx, ry)


def descan_pass(
    source: Source,
    pipe: Pipeline,
    mode: str,
    *,
    negative: str = "clip",
    block_bytes: int = 32 << 20,
    progress: Callable[[int], None] | None = None,
    cancel: Cancel | None = None,
) -> DescanPass:
    """:func:`centers_pass`, then the descan fit of ``mode`` over the scan.

    Raises
    ------
    InputError : no frame has a usable centre (every one empty or non-finite)
    """
    t0 = time.perf_counter()
    measured, flags, counts = centers_pass(source, pipe, negative=negative, block_bytes=block_bytes, progress=progress, cancel=cancel)
    usable = (flags & FLAGS_EXCLUDED) == 0
    # Every mode: each frame's uncertainty weights the fit (and is written and plotted);
    # auto also judges each residual's significance by it.
    noise = pipe.center_noise(FrameView(source, sanitize=False), valid=usable.reshape(-1), counts=counts.reshape(-1))
    noise = None if noise is None else noise.reshape(measured.shape)
    if cancel is not None:
        cancel.check()
    try:
        fit = fit_descan(measured, mode, valid=usable, center_noise=noise)
    except ValueError as e:
        raise InputError(f"--descan {mode}: {e} (every frame is empty or non-finite); run without --descan") from None
    flags = flags | np.where(fit.outliers, FLAG_DESCAN, 0).astype(np.uint8)
    return DescanPass(fit, measured, flags, time.perf_counter() - t0, "neighbours" if noise is None else "thinning")


def _surface(coef: np.ndarray, terms: tuple[str, ...]) -> str:
    """``127.53 + 1.204 y - 0.400 x`` for one coordinate's coefficients."""
    text = f"{coef[0]:.3f}"
    for c, t in zip(coef[1:], terms[1:]):
        text += f" {'-' if c < 0 else '+'} {abs(c):.3f} {t}"
    return text


def descan_lines(d: DescanPass) -> list[str]:
    """What the fit found and which centres pass 1 uses (for the log and the summary)."""
    f = d.fit
    name = "plane" if f.degree == 1 else "quadratic"
    lines = [
        f"descan ({f.mode}): {name} fitted to the centres of {int(f.valid.sum())} of {f.valid.size} frames (Huber; y, x = scan axes 0, 1 from -1 to 1): "
        f"row = {_surface(f.coefficients[0], f.terms)} px, col = {_surface(f.coefficients[1], f.terms)} px ({d.seconds:.1f} s)"
    ]
    drift = scan_step_drift(f)
    noise = np.broadcast_to(f.noise, f.model.shape).reshape(-1, 2)
    lines.append(
        f"  drift per scan step: row {drift[0, 0]:+.4f} px along Rx, {drift[0, 1]:+.4f} px along Ry; col {drift[1, 0]:+.4f}, {drift[1, 1]:+.4f} px; "
        f"residual std (robust) row {f.sigma[0]:.4f}, col {f.sigma[1]:.4f} px; estimator noise ~{np.median(noise[:, 0]):.4f}, {np.median(noise[:, 1]):.4f} px "
        + (
            f"(median; measured by Poisson thinning of up to {THINNING_FRAMES} frames: Pipeline.center_noise)"
            if d.noise == "thinning"
            else "(from differences of neighbouring frames: white jitter counts as noise)"
        )
    )
    use = _USE.get(f.mode) or (
        f"the model plus each frame's own offset where it is significant: {int(f.kept.sum())} of {f.kept.size} frames keep their own centre"
    )
    lines.append(f"  {int(f.outliers.sum())} frames off the model by more than 4 robust sigmas (flagged {FLAG_DESCAN}); pass 1 uses {use}")
    return lines


def descan_record(d: DescanPass) -> dict:
    """The ``preprocessing`` record's descan items, in py4DSTEM's names where it has them
    (``qx0_meas``, ``qx0_fit``, ``qx0_residuals``: qx = row)."""
    f = d.fit
    return {
        "descan_mode": f.mode,
        "descan_degree": int(f.degree),
        "descan_terms": " ".join(f.terms),
        "descan_coefficients": np.asarray(f.coefficients, np.float64),
        "descan_sigma": np.asarray(f.sigma, np.float64),
        "descan_noise": np.broadcast_to(np.asarray(f.noise, np.float64), f.model.shape).astype(np.float32),
        "descan_noise_source": d.noise,
        "qx0_meas": d.measured[..., 0],
        "qy0_meas": d.measured[..., 1],
        "qx0_fit": f.model[..., 0],
        "qy0_fit": f.model[..., 1],
        "qx0_residuals": f.residuals[..., 0],
        "qy0_residuals": f.residuals[..., 1],
        "descan_outliers": f.outliers.astype(np.uint8),
        "descan_kept": f.kept.astype(np.uint8),
        "descan_description": (
            "qx0/qy0 are the centres the frames were warped about; qx0_meas/qy0_meas each frame's own centre; "
            "qx0_fit/qy0_fit the descan model (descan_coefficients: rows row, col; columns the descan_terms, in the scan "
            "coordinates y = 2 i / (Rx - 1) - 1, x = 2 j / (Ry - 1) - 1); qx0_residuals = meas - fit; descan_outliers: farther "
            f"than 4 robust sigmas from the model (flag {FLAG_DESCAN}); descan_kept: frames warped about their own centre; "
            "descan_noise: each frame's centre uncertainty (px, 1 sigma, row and col), which weights the fit"
        ),
    }


def scan_step_drift(fit: Descan) -> np.ndarray:
    """(2, 2) px per scan step of the model's linear terms: rows (row, col), columns
    (along Rx, along Ry); ``d(y)/d(i) = 2 / (Rx - 1)``."""
    sy, sx = fit.model.shape[:2]
    return fit.coefficients[:, 1:3] * np.asarray([2.0 / (n - 1) if n > 1 else 0.0 for n in (sy, sx)])
