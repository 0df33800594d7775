"""Shared pytest configuration: strict numerics, deterministic hypothesis settings."""

import contextlib
import os
import threading

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Multi-device code is tested on 8 virtual CPU devices; single-device code uses the first.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax
import pytest
from hypothesis import HealthCheck, settings

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


class _Killed(Exception):
    """Raised from ``on_epoch_end`` to stop a run as a killed process would stop."""


@pytest.fixture
def train_killed_after():
    """A run killed after some epochs, its checkpoints left to resume from.

    ``kill(config, workdir, epochs, **train_onn_kwargs)`` trains until ``epochs`` epochs
    are done, then dies as a killed process would.
    """
    from optinc_jax import train_onn

    def kill(config, workdir, epochs: int, **kwargs) -> None:
        def stop(done, _history):
            if done == epochs:
                raise _Killed

        with pytest.raises(_Killed):
            train_onn(config, workdir, progress=False, on_epoch_end=stop, **kwargs)

    return kill


@contextlib.contextmanager
def _recording_compilations(clear_caches: bool = True):
    """Every backend compilation inside, as ``(thread name, program name)``.

    The program name is the jitted function's (``"train_epoch"``, from JAX's
    ``"jit(train_epoch)"``). ``clear_caches``: start from empty caches.
    """
    compiled = []

    def listen(event, _duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            name = str(kwargs.get("fun_name")).removeprefix("jit(").removesuffix(")")
            compiled.append((threading.current_thread().name, name))

    if clear_caches:
        jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


@pytest.fixture
def compilations():
    """A recorder of every backend compilation inside a ``with`` block.

    ``with compilations() as compiled:`` fills ``compiled`` with ``(thread name, program
    name)`` per compilation; the caches are cleared first unless called as
    ``compilations(clear_caches=False)``.
    """
    return _recording_compilations
