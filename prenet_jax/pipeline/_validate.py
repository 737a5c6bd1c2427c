"""Input checks shared by the public functions: clear errors, never a silent NaN."""

from __future__ import annotations

import numpy as np

__all__ = ["check_frames", "check_mask", "check_values_of", "host_dtype", "MIN_FRAME_SIDE"]

MIN_FRAME_SIDE = 8


def host_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype frames travel to the device in.

    Narrow integers and float32 travel as they are (uint16 stays 2 bytes over
    PCIe and is cast on the device), in the machine's byte order (a big-endian
    file is swapped on the host); 64-bit types, which jax would silently
    truncate without x64, are converted to float32 on the host first.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        return dtype.newbyteorder("=")
    return np.dtype(np.float32)


def check_frames(x, ndim: int, name: str, *, negative: str = "error", check_values: bool = True) -> np.ndarray:
    """Validate an array of frames and return it as a numpy array (no copy when possible).

    Parameters
    ----------
    x : array-like whose last two axes are (H, W)
    ndim : required number of dimensions
    name : argument name used in messages
    negative : ``"error"`` to refuse negative pixels, ``"clip"`` to accept them
    check_values : scan the values (finite, non-negative); off for very large
        arrays that are checked batch by batch instead
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    shape = tuple(x.shape)
    dtype = np.dtype(x.dtype)
    shapes = {2: "(H, W)", 3: "(N, H, W)", 4: "(Rx, Ry, H, W)"}
    if len(shape) != ndim:
        hint = " (for one frame use frames[None])" if ndim == 3 and len(shape) == 2 else ""
        raise ValueError(f"{name} must be {ndim}-D {shapes.get(ndim, '')}, got shape {shape}{hint}")
    if dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {dtype}; expected real numbers (integer or float counts)")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape})")
    if min(shape[-2:]) < MIN_FRAME_SIDE:
        raise ValueError(f"{name} frames are {shape[-2]}x{shape[-1]} px; at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} are needed")
    if check_values:
        check_values_of(np.asarray(x), name, negative)
    return x


def check_values_of(x: np.ndarray, name: str, negative: str = "error") -> None:
    """Raise a ``ValueError`` for NaN/Inf pixels, or for negative ones unless clipping."""
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            n = int(bad.sum())
            raise ValueError(
                f"{name} has {n} NaN or Inf pixel(s) (first at index {tuple(int(i) for i in np.argwhere(bad)[0])}); "
                "replace them (e.g. np.nan_to_num) or run `prenet-jax preprocess`, which flags such frames"
            )
    if negative == "error" and x.dtype.kind in "if":
        lo = x.min()
        if lo < 0:
            raise ValueError(
                f"{name} has negative pixels (min {float(lo):.4g}); expected counts >= 0. "
                "Use PipelineConfig(negative='clip') to treat them as zero (e.g. after dark subtraction)"
            )


def check_mask(mask) -> np.ndarray | None:
    """A detector mask as (H, W) bool, True = bad; None stays None."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), True = bad pixel; got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be boolean (True = bad pixel) or 0/1; it holds other values")
        m = m.astype(bool)
    if m.all():
        raise ValueError("the mask marks every pixel bad; True = bad (invert a mask of good pixels)")
    return m
