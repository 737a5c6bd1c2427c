"""``python -m prenet_jax.cli``: the same as the ``prenet-jax`` command."""

import sys

from . import main

sys.exit(main())
