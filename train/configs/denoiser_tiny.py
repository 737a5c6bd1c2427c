"""CI: the CBAM U-Net denoiser on 32 px synthetic disk patterns (CPU, about a minute).

    prenet-jax train run --config train/configs/denoiser_tiny.py
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import TrainConfig


def get_config() -> TrainConfig:
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
