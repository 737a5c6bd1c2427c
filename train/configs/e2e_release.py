"""Release: end-to-end fine-tuning of the three release networks at 256 px, for one H100.

Starts from the exported weights (best validation step) of denoiser_release, center_release and
ellipse_release. A batch is 4 groups of 8 frames; a group shares an ellipse, gain and
dose. The whole state (5.38 M parameters + Adam: 64.6 MB) is over what the device tool
carries back, so this run is sized to finish inside one GPU session (two 10-minute
commands on a warm machine) and only its float16 export (10.8 MB) comes back.

    prenet-jax train run --config train/configs/e2e_release.py --time-limit 540
"""

from prenet_jax.training import AugmentConfig
from prenet_jax.config import PipelineConfig
from prenet_jax.training import DataConfig
from prenet_jax.training import LossConfig
from prenet_jax.training import TrainConfig

PIPELINE = PipelineConfig.release()


def get_config() -> TrainConfig:
    return TrainConfig(
        name="e2e_release",
        task="e2e",
        pipeline=PIPELINE,
        data=DataConfig(source="simulated", root="/tmp/sim", dataset="patterns"),
        augment=AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5)),
        loss=LossConfig(e2e_image_weight=1.0, e2e_center_weight=0.03),
        batch_size=32,
        group_size=8,
        steps=3_000,
        lr=1e-4,
        warmup_steps=200,
        compute_dtype="auto",
        log_every=50,
        eval_every=250,
        eval_batches=16,
        checkpoint_every=500,
        patience=4,
        # The exported weights of the three runs (small enough to carry to the GPU machine).
        init_from={"denoiser": "weights/denoiser_release", "center_net": "weights/center_release", "ellipse_net": "weights/ellipse_release"},
        seed=0,
    )
