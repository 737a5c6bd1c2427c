"""The centre networks (heatmap U-Nets + weighted centre of mass), in three sizes
(``--config train/configs/center.py:SIZE``).

``tiny``
    CI: one pass on 32 px synthetic disk patterns.
``release``
    The bundled weights, coarse to fine: a depth-3 U-Net on the frame resampled to
    64 px finds the direct disk anywhere (cut-off and dynamical patterns included); a
    second one on a 64 px native crop around it (the crop centred on the true centre
    plus 2 px of Gaussian error while training) gives the sub-pixel centre. Each frame
    is the noisy detector frame or its noise-free expectation by a coin flip: the
    pipeline feeds it the denoiser's output, which lies between the two.
``real``
    ``release`` fine-tuned on what real detectors add (``prenet_jax.corruption``): a
    share of the frames saturated (flat-topped disks), cut off by the frame edge, with
    the direct disk dimmed below the Bragg disks, Kikuchi bands and diffuse lobes,
    panel gaps and hot pixels. No frame without a beam: it has no centre to learn, and
    the run's direct-beam test (``ops.direct_beam_found``) handles it. Not yet trained
    (table 5 of ``prenet-jax evaluate`` measures whether it would ship).
``paper``
    One pass on the whole 256 px frame for a GPU.
"""

import dataclasses
import runpy
from pathlib import Path

from prenet_jax.training import AugmentConfig, LossConfig, TrainConfig

#: The shared schedule of every size (train/configs/_base.py).
_BASE = runpy.run_path(str(Path(__file__).with_name("_base.py")))
base, simulated = _BASE["base"], _BASE["simulated"]

#: The bundled weights (``prenet_jax/weights/release``), where ``real`` starts.
WEIGHTS = Path(__file__).resolve().parents[2] / "prenet_jax" / "weights" / "release"

#: The share of training frames with each effect of real detectors (the ``real`` size).
REAL_DETECTOR = dict(
    saturation_fraction=0.15,
    edge_fraction=0.15,
    bragg_fraction=0.1,
    kikuchi_fraction=0.2,
    gap_fraction=0.1,
    hot_pixel_fraction=1e-4,
)


def get_config(size: str = "release") -> TrainConfig:
    if size == "tiny":
        augment = AugmentConfig(max_shift=6.0, ratio_range=(1.0, 1.15), dose_range=(1e2, 1e5), read_noise_range=(0.0, 0.5))
        return base("center", "tiny", augment=augment, loss=LossConfig(heatmap_sigma=1.5), center_input="noisy")
    augment = AugmentConfig(max_shift=16.0, ratio_range=(1.0, 1.2), dose_range=(1e2, 1e6), read_noise_range=(0.0, 0.5))
    if size == "release":
        return base(
            "center",
            "release",
            data=simulated(),
            # Linear warps: half the cost of cubic, and a centre label does not depend on edge sharpness.
            augment=dataclasses.replace(augment, method="linear"),
            loss=LossConfig(heatmap_sigma=1.5, coord_weight=0.1, fine_offset=2.0),
            batch_size=16,
            steps=4000,
            center_input="mixed",
            best_metric="center_err",
        )
    if size == "real":
        release = get_config("release")
        return dataclasses.replace(
            release,
            name="center_real",
            augment=dataclasses.replace(release.augment, **REAL_DETECTOR),
            # From the bundled networks: a fine-tuning, not a new training.
            init_from={"center_net": str(WEIGHTS), "center_fine": str(WEIGHTS)},
            steps=2000,
            lr=5e-4,
            warmup_steps=50,
        )
    if size == "paper":
        return base(
            "center",
            "paper",
            data=simulated(),
            augment=augment,
            loss=LossConfig(heatmap_sigma=2.0),
            steps=20_000,
            patience=5,
            center_input="mixed",
        )
    raise ValueError(f"unknown size {size!r}: use tiny, release, real or paper")
