"""The classical denoisers of table 1, each at its best setting for the frames at hand.

The Gaussian filter's sigma and the SVD/PCA rank are searched on the test frames
themselves, by the highest mean per-frame PSNR: each row is an upper bound of its
baseline. (The classical centre and ellipse methods are stages of the pipeline:
:mod:`prenet_jax.evaluation._pipelines` builds them.)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..ops import gaussian_filter
from . import _metrics as metrics
from ._corrupt import batches

__all__ = ["GAUSSIAN_SIGMAS", "PCA_RANKS", "gaussian_frames", "gaussian_search", "pca_denoise", "pca_patches", "pca_search"]

GAUSSIAN_SIGMAS = (0.3, 0.4, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)  # 0.3 px is nearly the identity
PCA_RANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # rank F-1 would reproduce the input


def gaussian_frames(frames: np.ndarray, sigma: float, batch: int = 64) -> np.ndarray:
    """Every frame of ``frames (..., H, W)`` through the Gaussian filter of ``sigma`` px."""
    out = np.empty(frames.shape, np.float32)
    flat, flat_out = frames.reshape(-1, *frames.shape[-2:]), out.reshape(-1, *frames.shape[-2:])
    for start, stop in batches(flat.shape[0], batch):
        flat_out[start:stop] = np.asarray(gaussian_filter(jnp.asarray(flat[start:stop]), float(sigma)))
    return out


def gaussian_search(noisy: np.ndarray, target: np.ndarray, sigmas: Sequence[float] = GAUSSIAN_SIGMAS) -> tuple[float, dict]:
    """The sigma (px) of the Gaussian filter with the highest mean per-frame PSNR here.

    Returns ``(best sigma, {sigma: mean PSNR})``. The mean PSNR (the log of the MSE) is
    the criterion, not the mean MSE: the MSE spans decades between frames, and its mean
    would pick the sigma that helps a few of the noisiest frames at the cost of most.
    Choosing on the test frames themselves makes the row an upper bound of the filter.
    """
    scores = {float(s): float(np.mean(metrics.psnr(gaussian_frames(noisy, s), target))) for s in sigmas}
    return max(scores, key=scores.get), scores


def pca_denoise(frames: np.ndarray, rank: int, poisson_scaling: bool = True) -> np.ndarray:
    """SVD/PCA denoising of the neighbouring frames of one patch.

    ``frames (F, H, W)`` -> the rank-``rank`` reconstruction about the mean frame.
    With ``poisson_scaling`` the data matrix is first divided by ``sqrt(g h^T)`` (``g``
    the frame sums, ``h`` the pixel means: Keenan & Kotula's weighting), so Poisson noise
    is about uniform and the leading components are signal, then multiplied back.

    The SVD runs on the ``F x F`` Gram matrix (few frames, many pixels).
    """
    f = frames.shape[0]
    x = frames.reshape(f, -1).astype(np.float64)
    if poisson_scaling:
        g = x.mean(axis=1, keepdims=True)
        h = x.mean(axis=0, keepdims=True)
        w = np.sqrt(np.maximum(g, 1e-12) * np.maximum(h, 1e-12) / max(float(x.mean()), 1e-12))
        w = np.where(h > 0, w, 1.0)
    else:
        w = np.ones((1, 1))
    y = x / w
    mu = y.mean(axis=0, keepdims=True)
    yc = y - mu
    k = int(min(rank, f - 1))
    if k <= 0:
        rec = np.broadcast_to(mu, y.shape)
    else:
        gram = yc @ yc.T
        _, vecs = np.linalg.eigh(gram)  # eigenvalues ascending
        u = vecs[:, ::-1][:, :k]
        rec = mu + u @ (u.T @ yc)
    return (rec * w).reshape(frames.shape).astype(np.float32)


def pca_patches(noisy: np.ndarray, rank: int) -> np.ndarray:
    """:func:`pca_denoise` of every patch of ``noisy (M, F, H, W)``."""
    return np.stack([pca_denoise(p, rank) for p in noisy])


def pca_search(noisy: np.ndarray, target: np.ndarray, ranks: Sequence[int] = PCA_RANKS) -> tuple[int, dict]:
    """The PCA rank with the highest mean per-frame PSNR on the patches ``(M, F, H, W)``
    (the criterion of :func:`gaussian_search`); ranks of ``F`` and above are skipped.

    Returns ``(best rank, {rank: mean PSNR})``.
    """
    frame = noisy.shape[-2:]
    scores = {
        r: float(np.mean(metrics.psnr(pca_patches(noisy, r).reshape(-1, *frame), target.reshape(-1, *frame))))
        for r in ranks
        if r < noisy.shape[1]
    }
    return max(scores, key=scores.get), scores
