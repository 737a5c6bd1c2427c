"""CI: the ResNet ellipse network on rotation-averaged 32 px synthetic patterns (CPU, about a minute).

The input mimics pass 0 of the pipeline: an averaged pattern at high dose, distorted,
recentred with 0.3 px of centre error, normalised and resized by the pipeline's own code.

    prenet-jax train run --config train/configs/ellipse_tiny.py
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import TrainConfig


def get_config() -> TrainConfig:
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
