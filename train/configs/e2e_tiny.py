"""CI: end-to-end fine-tuning of the three tiny networks through the composed warp (CPU).

Starts from the runs of denoiser_tiny, center_tiny and ellipse_tiny (train those first).
Each batch is 2 groups of 8 frames; a group shares one ellipse, gain and dose, its
frames have their own shift, in-plane rotation and noise.

    prenet-jax train run --config train/configs/e2e_tiny.py
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import LossConfig
from prenet_jax.training import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="e2e_tiny",
        task="e2e",
        pipeline=PipelineConfig.tiny(),
        data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4),
        augment=AugmentConfig(max_shift=3.0, ratio_range=(1.0, 1.15), dose_range=(1e3, 1e5), read_noise_range=(0.0, 0.5)),
        loss=LossConfig(e2e_image_weight=1.0, e2e_center_weight=0.03),
        batch_size=16,
        group_size=8,
        steps=200,
        lr=3e-4,
        warmup_steps=20,
        log_every=20,
        eval_every=50,
        eval_batches=4,
        checkpoint_every=100,
        patience=4,
        init_from={"denoiser": "runs/denoiser_tiny", "center_net": "runs/center_tiny", "ellipse_net": "runs/ellipse_tiny"},
        seed=0,
    )
