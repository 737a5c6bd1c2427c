"""The paper's full cube: (256, 256, 256, 256) uint16 (8 GiB) from HDF5 on local disk to
HDF5 output through ``prenet-jax preprocess``, with the time split into reading,
compute and writing and the overlap achieved. The target (issue 7) is <= 20 s on one
H100, reading and writing hidden behind compute.

A thin preset of ``file_to_file.py``; run it on the GPU machine's local disk:

    python benchmarks/cube.py --dir /tmp/cube [--compression none] [--batch-size 256]

Any option of ``file_to_file.py`` may be added; ``--scan`` defaults to 256 256.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import file_to_file  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--scan" not in argv:
        argv = ["--scan", "256", "256", *argv]
    sys.exit(file_to_file.main(argv))
