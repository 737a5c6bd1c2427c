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

from prenet_jax.config import PipelineConfig
from prenet_jax.training import AugmentConfig, DataConfig, LossConfig, TrainConfig, cache_dir


def get_config(size: str = "release") -> TrainConfig:
    if size == "tiny":
        return TrainConfig(
            name="ellipse_tiny",
            task="ellipse",
            pipeline=PipelineConfig.tiny(),
            data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4, rotation_average=16),
            augment=AugmentConfig(max_shift=1.0, ratio_range=(1.0, 1.2), dose_range=(1e5, 1e7), read_noise_range=(0.0, 0.5)),
            batch_size=16,
            steps=400,
            lr=3e-3,
            warmup_steps=40,
            log_every=20,
            eval_every=100,
            eval_batches=4,
            checkpoint_every=200,
            patience=4,
            ellipse_center_error=0.3,
            seed=0,
        )
    sim = DataConfig(source="simulated", root=str(cache_dir() / "release" / "sim"), dataset="patterns", rotation_average=16)
    # A mean pattern averages ~10^3 frames of 10^2-10^6 electrons each.
    augment = AugmentConfig(max_shift=2.0, ratio_range=(1.0, 1.2), dose_range=(1e5, 1e9), read_noise_range=(0.0, 0.5))
    if size == "release":
        return TrainConfig(
            name="ellipse_release",
            task="ellipse",
            pipeline=PipelineConfig.release(),
            data=sim,
            augment=augment,
            loss=LossConfig(ratio_weight=100.0),
            batch_size=32,
            steps=2500,
            lr=2e-3,
            warmup_steps=100,
            end_lr_fraction=0.02,
            log_every=50,
            eval_every=250,
            eval_batches=8,
            checkpoint_every=250,
            ellipse_center_error=0.2,
            seed=0,
        )
    if size == "paper":
        return TrainConfig(
            name="ellipse_paper",
            task="ellipse",
            pipeline=PipelineConfig.paper(),
            data=sim,
            augment=augment,
            loss=LossConfig(ratio_weight=100.0),
            batch_size=32,
            steps=10_000,
            lr=1e-3,
            warmup_steps=500,
            compute_dtype="auto",
            log_every=100,
            eval_every=500,
            eval_batches=16,
            checkpoint_every=1000,
            patience=6,
            ellipse_center_error=0.3,
            seed=0,
        )
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
