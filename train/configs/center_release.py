"""Release: the heatmap U-Net centre network at 256 px on the abTEM data set, for one H100.

Widths: 16, depth 4 (1.94 M parameters; 23.3 MB of training state: carried between GPU
sessions). Heatmap Gaussian of 2 px plus the coordinate loss; trained on the raw noisy
frames (the pipeline also runs it after the denoiser; end-to-end fine-tuning adapts it).

    prenet-jax train run --config train/configs/center_release.py --time-limit 540
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import LossConfig
from prenet_jax.training import TrainConfig

PIPELINE = PipelineConfig.release()


def get_config() -> TrainConfig:
    return TrainConfig(
        name="center_release",
        task="center",
        pipeline=PIPELINE,
        data=DataConfig(source="simulated", root="/tmp/sim", dataset="patterns"),
        augment=AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5),
                              hot_pixel_fraction=2e-5, dead_pixel_fraction=2e-5),
        loss=LossConfig(heatmap_sigma=2.0, heatmap_weight=1.0, coord_weight=0.1, huber_delta=1.0),
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
        center_input="noisy",
        seed=0,
    )
