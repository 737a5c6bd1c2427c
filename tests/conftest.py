"""Shared fixtures. Tests run on the CPU with tiny configurations."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles hundreds of small programs and runs each a few times: XLA's backend
# optimisation costs more than it saves here (11 % of the wall time on a 2-core
# subset). Subprocesses inherit it; a test that sets its own XLA_FLAGS keeps its own.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import chex
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    # chex counts traces per definition site: start every test from zero.
    chex.clear_trace_counter()
    yield
