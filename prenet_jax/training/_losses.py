"""What the losses of the training tasks share (pure functions, float32).

:class:`LossConfig` (every task's loss settings), the output-space :func:`transform`,
the Huber loss and the PSNR. Each task's batch, loss and metrics are in
``training/tasks/<stage>.py``. Every loss runs the networks exactly as the pipeline does
(the stage functions of :mod:`prenet_jax.pipeline`: the same normalisation, padding,
resizing and coordinate maps), so what is trained is what is deployed; each returns
``(loss, metrics)`` with ``metrics`` a dict of scalars (batch means).

The denoiser's loss is in the network's own output space, ``t(I / max(noisy))`` of
:func:`prenet_jax.pipeline.normalize` (``sqrt`` by default): the square root is
variance-stabilising for Poisson counts, so every pixel's error counts about equally
whatever its intensity; the linear space lets the direct disk (up to 10^3 x the Bragg
disks) dominate. docs/training.md gives the measured numbers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ..stages import CENTER

__all__ = ["LossConfig", "transform"]

#: The centre stage's coarse and fine networks.
_COARSE, _FINE = CENTER.keys


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights and widths of the losses.

    Attributes
    ----------
    heatmap_sigma : standard deviation (network px) of the Gaussian heatmap target.
    heatmap_weight, coord_weight : weights of the heatmap BCE and of the coordinate Huber loss.
    huber_delta : px where the coordinate (and end-to-end centre) loss turns from
        quadratic to linear (outliers early in training do not dominate).
    ratio_weight : weight of the squared ratio error against the (cos 2t, sin 2t) error
        (ratios vary by ~0.1, the unit vector by ~1).
    e2e_image_weight, e2e_center_weight, e2e_ellipse_weight : end-to-end terms; the
        ellipse term (on the network output) is off by default: the ellipse network is
        taught by the corrected frames alone.
    sqrt_eps : added inside the square root of the end-to-end image loss (a finite
        gradient at zero intensity).
    denoise_loss : ``"mse"``: the squared error in the network's space; ``"relative"``:
        each frame's squared error divided by that of its noisy input in the same
        space, so every dose counts alike (a plain MSE is dominated by the noisiest,
        lowest-dose frames and teaches the network to smooth the clean ones).
    fine_offset : centre task with a fine network: the fine crop is centred on the
        true centre plus a Gaussian error of this many px per axis (what the coarse
        pass leaves), so the fine network learns to find the centre anywhere near
        the middle of its crop.
    fine_weight : weight of the fine pass's loss against the coarse pass's.
    """

    heatmap_sigma: float = 2.0
    heatmap_weight: float = 1.0
    coord_weight: float = 0.1
    huber_delta: float = 1.0
    ratio_weight: float = 100.0
    e2e_image_weight: float = 1.0
    e2e_center_weight: float = 0.03
    e2e_ellipse_weight: float = 0.0
    sqrt_eps: float = 1e-4
    denoise_loss: str = "mse"
    fine_offset: float = 2.0
    fine_weight: float = 1.0

    def __post_init__(self):
        if self.denoise_loss not in ("mse", "relative"):
            raise ValueError(f"denoise_loss={self.denoise_loss!r}: use 'mse' or 'relative'")


def transform(t: jax.Array, kind: str) -> jax.Array:
    """The pipeline's intensity transform of max-scaled intensities ``t`` in [0, 1]."""
    return jnp.sqrt(t) if kind == "sqrt" else t


def _huber(err: jax.Array, delta: float) -> jax.Array:
    return optax.huber_loss(err, delta=delta) / delta  # ~|err| for large errors, err^2/(2 delta) small


def _psnr(err_sq_mean: jax.Array, peak: jax.Array) -> jax.Array:
    return 10.0 * jnp.log10(peak**2 / jnp.maximum(err_sq_mean, 1e-30))


# ----------------------------------------------------------------------------- denoiser


# ----------------------------------------------------------------------------- centre


# ----------------------------------------------------------------------------- ellipse


# ----------------------------------------------------------------------------- end to end
