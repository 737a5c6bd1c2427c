#!/usr/bin/env python
"""Export trained runs as inference weights: the same as ``prenet-jax train export``.

    python train/export.py -o weights/tiny --denoiser runs/denoiser_tiny --center runs/center_tiny --ellipse runs/ellipse_tiny
    python train/export.py -o prenet_jax/weights/release --e2e runs/e2e_release --storage-dtype float16
"""

import sys

from prenet_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "export", *sys.argv[1:]]))
