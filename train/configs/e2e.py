"""End-to-end fine-tuning of the three networks, in three sizes
(``--config train/configs/e2e.py:SIZE``): gradients from the corrected frames and the
centres flow through the composed warp, the recentred mean and the ellipse network
into every network. A batch is groups of frames sharing one ellipse, gain and dose.

``tiny``
    CI: starts from ``runs/{denoiser,center,ellipse}_tiny``.
``release``
    The bundled weights: a short fine-tune on two CPU cores, on the central 128 px of
    the abTEM patterns (the direct disk and the first Bragg orders; a quarter of the
    cost of whole frames), starting from the release runs of the three networks. The
    networks that see native pixels learn (the denoiser and the fine centre network);
    the coarse centre network and the ellipse network stay as trained. The recipe
    keeps the result only if it lowers the held-out end-to-end error.
``paper``
    Whole 256 px frames for a GPU.
"""

from prenet_jax.config import PipelineConfig
from prenet_jax.training import AugmentConfig, DataConfig, LossConfig, TrainConfig, cache_dir


def _runs(root, suffix: str) -> dict:
    return {
        "denoiser": f"{root}/denoiser_{suffix}",
        "center_net": f"{root}/center_{suffix}",
        "center_fine": f"{root}/center_{suffix}",
        "ellipse_net": f"{root}/ellipse_{suffix}",
    }


def get_config(size: str = "release") -> TrainConfig:
    loss = LossConfig(e2e_image_weight=1.0, e2e_center_weight=0.03)
    if size == "tiny":
        init = _runs("runs", "tiny")
        del init["center_fine"]  # the tiny pipeline has one centre pass
        return TrainConfig(
            name="e2e_tiny",
            task="e2e",
            pipeline=PipelineConfig.tiny(),
            data=DataConfig(source="synthetic", size=32, n_structures=64, patterns_per_structure=4),
            augment=AugmentConfig(max_shift=3.0, ratio_range=(1.0, 1.15), dose_range=(1e3, 1e5), read_noise_range=(0.0, 0.5)),
            loss=loss,
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
            init_from=init,
            seed=0,
        )
    root = cache_dir() / "release"
    augment = AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5))
    if size == "release":
        return TrainConfig(
            name="e2e_release",
            task="e2e",
            pipeline=PipelineConfig.release(),
            data=DataConfig(source="simulated", root=str(root / "sim"), dataset="patterns", crop=128),
            augment=augment,
            loss=loss,
            batch_size=16,
            group_size=8,
            steps=300,
            lr=1e-4,
            warmup_steps=30,
            log_every=10,
            eval_every=50,
            eval_batches=4,
            checkpoint_every=50,
            init_from=_runs(root / "runs", "release"),
            seed=0,
            # The networks that see native pixels: on 128 px crops the coarse centre network
            # would see disks at twice its trained scale, and the ellipse network a mean
            # pattern cut at radius 64 px, neither of which it meets on whole frames.
            trainable=("denoiser", "center_fine"),
            best_metric="image_rmse",
        )
    if size == "paper":
        return TrainConfig(
            name="e2e_paper",
            task="e2e",
            pipeline=PipelineConfig.paper(),
            data=DataConfig(source="simulated", root=str(root / "sim"), dataset="patterns"),
            augment=augment,
            loss=loss,
            batch_size=32,
            group_size=8,
            steps=3000,
            lr=1e-4,
            warmup_steps=200,
            compute_dtype="auto",
            log_every=50,
            eval_every=250,
            eval_batches=16,
            checkpoint_every=500,
            patience=4,
            init_from=_runs(root / "runs", "paper"),
            seed=0,
        )
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
