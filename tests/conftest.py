"""Shared pytest configuration: strict numerics, deterministic hypothesis settings."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# JIT compilation makes first examples slow; deadlines would flake.
settings.register_profile(
    "optinc",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("optinc")


@pytest.fixture
def x64():
    """Run the test body with ``jax_enable_x64`` on, restoring the previous value."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
