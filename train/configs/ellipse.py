"""The ellipse network (ResNet-50 bottleneck blocks), in three sizes
(``--config train/configs/ellipse.py:SIZE``).

Inputs mimic pass 0 of the pipeline: each clean pattern averaged over in-plane
rotations (rings, as the mean of a polycrystalline or amorphous scan), distorted and
shifted at the dose of a mean of thousands of frames, recentred by the pipeline's warp
at the true centre plus a Gaussian error, then made into the network input.

``tiny``
    CI: 32 px synthetic patterns, image input.
``release``
    The bundled weights: width 16 on the polar transform of the recentred mean
    (64 angles x 128 radii, with the azimuthal residual and cos/sin 2 phi channels).
``paper``
    Width 64 on the 256 px image for a GPU.
"""

import runpy
from pathlib import Path

from prenet_jax.training import AugmentConfig, DataConfig, LossConfig, TrainConfig

#: The shared schedule of every size (train/configs/_base.py).
_BASE = runpy.run_path(str(Path(__file__).with_name("_base.py")))
base, simulated = _BASE["base"], _BASE["simulated"]


def get_config(size: str = "release") -> TrainConfig:
    if size == "tiny":
        return base(
            "ellipse",
            "tiny",
            data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4, rotation_average=16),
            augment=AugmentConfig(max_shift=1.0, ratio_range=(1.0, 1.2), dose_range=(1e5, 1e7), read_noise_range=(0.0, 0.5)),
            ellipse_center_error=0.3,
        )
    # A mean pattern averages ~10^3 frames of 10^2-10^6 electrons each.
    augment = AugmentConfig(max_shift=2.0, ratio_range=(1.0, 1.2), dose_range=(1e5, 1e9), read_noise_range=(0.0, 0.5))
    common = dict(data=simulated(rotation_average=16), augment=augment, loss=LossConfig(ratio_weight=100.0))
    if size == "release":
        return base("ellipse", "release", **common, batch_size=32, steps=2500, ellipse_center_error=0.2)
    if size == "paper":
        return base("ellipse", "paper", **common, steps=10_000, eval_every=500, patience=6, ellipse_center_error=0.3)
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
