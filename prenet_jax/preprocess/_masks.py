"""The detector mask of a file run: the user's (``--mask FILE``), the pipeline's own, and
the hot and dead pixels found in frames sampled across the scan (``--bad-pixels auto``).

Masked pixels never bias anything: the centre of mass, Friedel symmetry and the Friedel
refinement count only the pixels whose mirror image is also seen, and the denoiser,
the networks and the output see them filled from their neighbours
(:func:`prenet_jax.ops.fill_masked`). The mask used is written into the output's
record and drawn on the mean-pattern figure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..io import Source
from ..ops import detect_bad_pixels, pixel_sums

__all__ = ["MaskInfo", "BAD_PIXEL_FRAMES", "build_mask", "mask_lines", "mask_record"]

#: Frames sampled evenly across the scan to find hot and dead pixels.
BAD_PIXEL_FRAMES = 256


@dataclasses.dataclass
class MaskInfo:
    """The mask of a run and where each part came from.

    Attributes
    ----------
    mask : (H, W) bool, True = bad, the union of the parts; None when nothing is masked
    given : (H, W) bool, the user's mask (file and pipeline), or None
    hot, dead : (H, W) bool found in the sampled frames, or None when not searched
    frames : frames sampled for the search (0: not searched)
    """

    mask: np.ndarray | None
    given: np.ndarray | None = None
    hot: np.ndarray | None = None
    dead: np.ndarray | None = None
    frames: int = 0


def build_mask(source: Source, given: np.ndarray | None, detect: bool, n: int = BAD_PIXEL_FRAMES) -> MaskInfo:
    """The run's mask: ``given`` (True = bad, or None) and, with ``detect``, the hot and
    dead pixels of :func:`prenet_jax.ops.detect_bad_pixels` over ``n`` frames sampled
    evenly across the scan (pixels already given are not searched)."""
    info = MaskInfo(mask=None if given is None else given.copy(), given=given)
    if detect:
        total = source.n_frames
        index = np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))
        total = sum(pixel_sums(source.read_frames(index[i : i + 32])) for i in range(0, index.size, 32))  # bounded memory
        hot, dead = detect_bad_pixels(total)
        if given is not None:
            hot, dead = hot & ~given, dead & ~given
        info.hot, info.dead, info.frames = hot, dead, int(index.size)
        found = hot | dead
        if found.any():
            info.mask = found if info.mask is None else info.mask | found
    return info


def mask_lines(info: MaskInfo) -> list[str]:
    """One line for the log and the summary."""
    parts = []
    if info.given is not None:
        parts.append(f"{int(info.given.sum())} given")
    if info.frames:
        parts.append(f"{int(info.hot.sum())} hot and {int(info.dead.sum())} dead found in {info.frames} frames sampled across the scan")
    if not parts:
        return []
    n = 0 if info.mask is None else int(info.mask.sum())
    text = f"mask: {n} pixels ({'; '.join(parts)})"
    if n:
        text += ": left out of the centres (with their mirror images) and filled from their neighbours in the output"
    return [text]


def mask_record(info: MaskInfo) -> dict:
    """The ``preprocessing`` record's mask items (``mask`` in the INPUT frames' pixels)."""
    if info.given is None and not info.frames:
        return {}
    mask = np.zeros_like(info.hot) if info.mask is None else info.mask  # searched, nothing found
    rec = {
        "mask": mask.astype(np.uint8),
        "mask_pixels": int(mask.sum()),
        "mask_given_pixels": 0 if info.given is None else int(info.given.sum()),
        "mask_description": (
            "detector mask used, in the INPUT frames' pixels (1 = bad): the user's (mask_given_pixels) and the hot and dead "
            "pixels found in mask_frames frames sampled across the scan. Masked pixels were left out of the centre estimates "
            "(with their mirror images about the centre) and filled from their neighbours before denoising, so the output holds "
            "no 0 or spike there; input pixel p lands at frame_center + D^-1 (p - (qx0, qy0)) in each output frame"
        ),
    }
    if info.frames:
        rec.update(mask_hot=info.hot.astype(np.uint8), mask_dead=info.dead.astype(np.uint8), mask_frames=int(info.frames))
    return rec
