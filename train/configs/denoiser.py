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

from prenet_jax.config import PipelineConfig
from prenet_jax.training import AugmentConfig, DataConfig, LossConfig, TrainConfig, cache_dir

# A few hot and dead pixels, which the denoiser learns to remove.
DETECTOR = dict(hot_pixel_fraction=2e-5, dead_pixel_fraction=2e-5)


def get_config(size: str = "release") -> TrainConfig:
    if size == "tiny":
        return TrainConfig(
            name="denoiser_tiny",
            task="denoiser",
            pipeline=PipelineConfig.tiny(),
            data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4),
            augment=AugmentConfig(max_shift=3.0, ratio_range=(1.0, 1.15), dose_range=(1e2, 1e5), read_noise_range=(0.0, 0.5)),
            batch_size=16,
            steps=400,
            lr=3e-3,
            warmup_steps=40,
            log_every=20,
            eval_every=100,
            eval_batches=4,
            checkpoint_every=200,
            patience=4,
            seed=0,
        )
    sim = DataConfig(source="simulated", root=str(cache_dir() / "release" / "sim"), dataset="patterns")
    augment = AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5), **DETECTOR)
    if size == "release":
        return TrainConfig(
            name="denoiser_release",
            task="denoiser",
            pipeline=PipelineConfig.release(),
            data=sim,
            augment=augment,
            loss=LossConfig(denoise_loss="relative"),
            batch_size=8,
            crop_size=64,
            crops_per_frame=4,
            steps=3500,
            lr=2e-3,
            warmup_steps=100,
            end_lr_fraction=0.02,
            log_every=50,
            eval_every=250,
            eval_batches=8,
            eval_batch_size=8,
            checkpoint_every=250,
            seed=0,
        )
    if size == "paper":
        return TrainConfig(
            name="denoiser_paper",
            task="denoiser",
            pipeline=PipelineConfig.paper(),
            data=sim,
            augment=augment,
            loss=LossConfig(denoise_loss="relative"),
            batch_size=32,
            steps=20_000,
            lr=1e-3,
            warmup_steps=500,
            compute_dtype="auto",
            log_every=100,
            eval_every=1000,
            eval_batches=16,
            checkpoint_every=1000,
            patience=5,
            seed=0,
        )
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
