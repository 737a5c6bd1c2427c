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

import runpy
from pathlib import Path

from prenet_jax.training import AugmentConfig, LossConfig, TrainConfig, cache_dir

#: The shared schedule of every size (train/configs/_base.py).
_BASE = runpy.run_path(str(Path(__file__).with_name("_base.py")))
base, simulated = _BASE["base"], _BASE["simulated"]


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
        return base(
            "e2e",
            "tiny",
            augment=AugmentConfig(max_shift=3.0, ratio_range=(1.0, 1.15), dose_range=(1e3, 1e5), read_noise_range=(0.0, 0.5)),
            loss=loss,
            group_size=8,
            steps=200,
            lr=3e-4,
            warmup_steps=20,
            eval_every=50,
            checkpoint_every=100,
            init_from=init,
        )
    runs = cache_dir() / "release" / "runs"
    augment = AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5))
    # A short fine-tune from trained networks: its own schedule, no decay floor.
    schedule = dict(loss=loss, augment=augment, group_size=8, lr=1e-4, end_lr_fraction=TrainConfig.end_lr_fraction)
    if size == "release":
        return base(
            "e2e",
            "release",
            **schedule,
            data=simulated(crop=128),
            batch_size=16,
            steps=300,
            warmup_steps=30,
            log_every=10,
            eval_every=50,
            eval_batches=4,
            checkpoint_every=50,
            init_from=_runs(runs, "release"),
            # The networks that see native pixels: on 128 px crops the coarse centre network
            # would see disks at twice its trained scale, and the ellipse network a mean
            # pattern cut at radius 64 px, neither of which it meets on whole frames.
            trainable=("denoiser", "center_fine"),
            best_metric="image_rmse",
        )
    if size == "paper":
        return base(
            "e2e",
            "paper",
            **schedule,
            data=simulated(),
            steps=3000,
            warmup_steps=200,
            log_every=50,
            eval_every=250,
            checkpoint_every=500,
            patience=4,
            init_from=_runs(runs, "paper"),
        )
    raise ValueError(f"unknown size {size!r}: use tiny, release or paper")
