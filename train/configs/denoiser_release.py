"""Release: the CBAM U-Net denoiser at 256 px on the abTEM data set, sized for one H100.

Widths: 16 at full resolution, depth 4 (1.96 M parameters). The whole training state
(parameters + two Adam moments, float32) is 23.5 MB, so it can be carried between GPU
sessions (the device tool returns at most 64 MiB, 16 MiB a file; orbax splits the
checkpoint into files of a few MiB). Trained in 10-minute commands with ``--time-limit 540``;
each command resumes from ``runs/denoiser_release`` (docs/training.md has the recipe).

    prenet-jax train run --config train/configs/denoiser_release.py --time-limit 540
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import TrainConfig

PIPELINE = PipelineConfig.release()


def get_config() -> TrainConfig:
    return TrainConfig(
        name="denoiser_release",
        task="denoiser",
        pipeline=PIPELINE,
        data=DataConfig(source="simulated", root="/tmp/sim", dataset="patterns"),
        # The paper's range of doses; a few hot and dead pixels the denoiser learns to remove.
        augment=AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5),
                              hot_pixel_fraction=2e-5, dead_pixel_fraction=2e-5),
        batch_size=32,
        steps=20_000,
        lr=1e-3,
        warmup_steps=500,
        end_lr_fraction=0.01,
        compute_dtype="auto",  # bfloat16 compute, float32 parameters on the GPU
        log_every=100,
        eval_every=1000,
        eval_batches=16,
        checkpoint_every=1000,
        patience=5,
        seed=0,
    )
