#!/usr/bin/env python
"""Train (or resume) one experiment: the same as ``prenet-jax train run``.

    python train/train.py --config train/configs/denoiser_tiny.py [--workdir runs/x] [--set steps=100]
"""

import sys

from prenet_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "run", *sys.argv[1:]]))
