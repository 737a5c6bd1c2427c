"""Release: the ResNet-50 ellipse network (width 16) at 256 px, for one H100.

Inputs: every training pattern averaged over 32 in-plane rotations (rings, as the mean
of a polycrystalline or amorphous scan), distorted, shifted by up to 2 px, at the dose
of thousands of frames, recentred with 0.3 px of centre error by the pipeline's warp.
Bottleneck blocks [3, 4, 6, 3], width 16 (1.48 M parameters; 17.8 MB of state). The
simulated ``ellipse`` data set can replace the rotation average: set
``data.dataset="ellipse"`` and ``data.rotation_average=0``.

    prenet-jax train run --config train/configs/ellipse_release.py --time-limit 540
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import LossConfig
from prenet_jax.training import TrainConfig

PIPELINE = PipelineConfig.release()


def get_config() -> TrainConfig:
    return TrainConfig(
        name="ellipse_release",
        task="ellipse",
        pipeline=PIPELINE,
        data=DataConfig(source="simulated", root="/tmp/sim", dataset="patterns", rotation_average=32),
        augment=AugmentConfig(max_shift=2.0, ratio_range=(1.0, 1.2), dose_range=(1e5, 1e8), read_noise_range=(0.0, 0.5)),
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
