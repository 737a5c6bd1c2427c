"""Shared fixtures. Tests run on the CPU with tiny configurations."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
