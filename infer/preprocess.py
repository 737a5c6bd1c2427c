"""Entry point: ``python infer/preprocess.py INPUT -o OUTPUT [options]``.

The same as ``prenet-jax preprocess``; the logic lives in ``prenet_jax.preprocess._run``.
"""

import sys

from prenet_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
