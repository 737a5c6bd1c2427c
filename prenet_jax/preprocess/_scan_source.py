"""``--denoise-method scan`` on a file: the input read through the scan denoiser.

:class:`ScanDenoisedSource` wraps the opened input (:class:`prenet_jax.io.Source`) and
hands out denoised frames (float32 counts) to whatever reads it: the descan pass and the
streaming pass then run unchanged, with a step that leaves the frames as they are. A read
of scan rows ``[i0, i1)`` denoises them with :class:`prenet_jax.pipeline.ScanDenoiser`,
reading ``2 * radius`` more rows on each side; the rows it denoised last are kept, so
the streaming reads in scan order read each row about ``1 + 4 radius / rows per read``
times and denoise it once. Host memory stays a few rows of frames. Each frame's window,
blur and estimated risk are kept (``(Rx, Ry)`` maps) for the output's record.
"""

from __future__ import annotations

import collections

import numpy as np

from ..pipeline import ScanDenoiser, noise_check, scan_input, scan_template

__all__ = ["ScanDenoisedSource", "scan_noise_problem"]

#: Frames the alignment template is averaged from, sampled evenly across the scan.
TEMPLATE_FRAMES = 512


def scan_noise_problem(source, mask=None) -> str:
    """Why the scan denoiser cannot run on ``source`` (its frames are not counted
    electrons with independent pixels: :func:`prenet_jax.pipeline.noise_check` on 64
    frames sampled across the scan), or ``""``."""
    n = source.n_frames
    pick = np.unique(np.linspace(0, n - 1, min(n, 64)).round().astype(np.int64))
    return noise_check(scan_input(source.read_frames(pick)[None], mask)[0])


class ScanDenoisedSource:
    """The frames of ``source``, denoised with their scan neighbours.

    Parameters
    ----------
    source : the opened input
    mask : detector mask (True = bad) whose pixels are filled before denoising, or None
    frames_per_block : about how many frames one denoising call takes (whole rows)
    """

    def __init__(self, source, mask=None, frames_per_block: int = 32):
        self.inner = source
        self.mask = mask
        rx, ry = source.shape[:2]
        n = rx * ry
        pick = np.unique(np.linspace(0, n - 1, min(n, TEMPLATE_FRAMES)).round().astype(np.int64))
        sample = scan_input(source.read_frames(pick)[None], mask)[0]
        self.denoiser = ScanDenoiser(self._raw_rows, (rx, ry), template=scan_template(sample))
        self.rows_per_block = max(1, min(rx, frames_per_block // max(ry, 1)))
        self.maps = np.full((4, rx, ry), np.nan, np.float32)  # window, sigma, risk, noisy risk
        self._rows: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._keep = self.rows_per_block + 4 * self.denoiser.radius + 2

    # what the readers use of a Source, the frames now float32
    dtype = np.dtype(np.float32)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def frame_bytes(self) -> int:
        return self.inner.shape[2] * self.inner.shape[3] * 4

    def describe(self) -> str:
        return self.inner.describe() + ", denoised with its scan neighbours"

    def _raw_rows(self, a: int, b: int) -> np.ndarray:
        return scan_input(self.inner.read_block(a, b, 0, self.inner.shape[1]), self.mask)

    def _row(self, i: int) -> np.ndarray:
        if i not in self._rows:
            r0 = (i // self.rows_per_block) * self.rows_per_block
            r1 = min(self.inner.shape[0], r0 + self.rows_per_block)
            frames, maps = self.denoiser.rows(r0, r1)
            self.maps[:, r0:r1] = maps
            for k in range(r0, r1):
                self._rows[k] = frames[k - r0]
            while len(self._rows) > self._keep:
                self._rows.popitem(last=False)
        self._rows.move_to_end(i)
        return self._rows[i]

    def read_block(self, i0: int, i1: int, j0: int, j1: int) -> np.ndarray:
        return np.stack([self._row(i)[j0:j1] for i in range(i0, i1)])

    def read_frames(self, index) -> np.ndarray:
        index = np.asarray(index, np.int64)
        ry = self.inner.shape[1]
        out = np.empty((index.size,) + tuple(self.inner.shape[2:]), np.float32)
        for k, f in enumerate(index):
            out[k] = self._row(int(f // ry))[int(f % ry)]
        return out

    def record(self) -> dict:
        """The denoising for the output's record: the description, the per-frame maps,
        and the estimated PSNR gain over the raw frames."""
        lam, sigma, risk, noisy = self.maps
        seen = np.isfinite(risk)
        gain = float(10 * np.log10(np.mean(noisy[seen]) / max(float(np.mean(risk[seen])), 1e-30))) if seen.any() else float("nan")
        return {
            "description": (
                "scan: each frame averaged with its aligned scan neighbours (5x5 window) and blurred, the window and "
                "the blur chosen per frame by its estimated Poisson risk (the frame alone and the frame-by-frame "
                f"Gaussian among the choices); estimated PSNR gain over the raw frames {gain:.1f} dB"
            ),
            "scan_window": lam.astype(np.float64),
            "sigma": sigma.astype(np.float64),
            "estimated_mse": risk.astype(np.float64),
            "estimated_gain_db": gain,
        }
