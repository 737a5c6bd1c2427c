"""The CBAM U-Net denoiser, in three sizes (``--config train/configs/denoiser.py:SIZE``).

``tiny``
    CI: 32 px synthetic disk patterns, a minute on 2 CPU cores.
``release``
    The bundled weights: abTEM patterns (256 px), trained on two CPU cores inside the
    release recipe (``train/release.py``). Whole frames are augmented and normalised,
    then the network sees four 64 px crops of each (it is fully convolutional and runs
    on whole frames at inference). Residual output in the sqrt space and the
    "relative" loss (each frame's error over its input's): never worse than the input.
``paper``
    The paper's scale for a GPU: width 32, whole 256 px frames, bfloat16.

    prenet-jax train run --config train/configs/denoiser.py:release --time-limit 7200
"""

import runpy
from pathlib import Path

from prenet_jax.training import AugmentConfig, LossConfig, TrainConfig

#: The shared schedule of every size (train/configs/_base.py).
_BASE = runpy.run_path(str(Path(__file__).with_name("_base.py")))
base, simulated = _BASE["base"], _BASE["simulated"]

# A few hot and dead pixels, which the denoiser learns to remove.
DETECTOR = dict(hot_pixel_fraction=2e-5, dead_pixel_fraction=2e-5)


def get_config(size: str = "release") -> TrainConfig:
    if size == "tiny":
        augment = AugmentConfig(max_shift=3.0, ratio_range=(1.0, 1.15), dose_range=(1e2, 1e5), read_noise_range=(0.0, 0.5))
        return base("denoiser", "tiny", augment=augment)
    augment = AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5), **DETECTOR)
    loss = LossConfig(denoise_loss="relative")
    if size == "release":
        return base(
            "denoiser",
            "release",
            data=simulated(),
            augment=augment,
            loss=loss,
            batch_size=8,
            crop_size=64,
            crops_per_frame=4,
            steps=3500,
            eval_batch_size=8,
        )
    if size == "paper":
        return base("denoiser", "paper", data=simulated(), augment=augment, loss=loss, steps=20_000, patience=5)
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
