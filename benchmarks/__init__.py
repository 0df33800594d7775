"""Benchmarks: speed and memory, each against a baseline timed in the same run.

Run them from the repository root (each writes ``OUT/<name>.json``):

- ``python -m benchmarks.bench_mesh --out runs/bench [--quick]``: the photonic core
  (unitary, decomposition, forward) against per-MZI NumPy loops and ``interferometer``.
- ``python -m benchmarks.bench_train --out runs/bench``: time to a projected 100 % (8b4s)
  and exhaustive-evaluation throughput against the dense matmul peak.
- ``python -m benchmarks.bench_recipe --out runs/bench [--revision REV]``: time to the
  demo's projected 100 % with the 8b4s preset against ``TrainConfig()`` (and against
  ``make demo`` as commit REV trained it), each run in a fresh process as ``make demo``;
  and each scenario's epoch cost.
- ``python -m benchmarks.bench_scale --out runs/bench [--quick]``: evaluation throughput
  over 1-8 devices, training speed per scenario, evaluation memory.
- ``python -m benchmarks.bench_collective --out runs/bench``: ``optinc_jax.pmean`` and the
  simulated ring against ``lax.pmean``.
- ``python -m benchmarks.bench_distributed --out runs/bench``: training steps per second
  of the small ResNet through each all-reduce, against ``exact``.
- ``python -m benchmarks.bench_robustness --out runs/bench``: noisy exhaustive evaluations,
  vmapped over trials against a Python loop.

They use the package's public functions only.
"""

import os
from typing import Any

# re-exported; neither module imports JAX when imported (force_host_devices must run first)
from optinc_jax.learning.machine import cpu_model, machine_description

__all__ = ["cpu_model", "force_host_devices", "machine_environment"]


def force_host_devices(count: int) -> None:
    """Ask XLA for ``count`` virtual CPU devices, unless ``XLA_FLAGS`` already sets a count.

    Takes effect only before JAX is imported: call it at the top of a benchmark's main.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def machine_environment() -> dict[str, Any]:
    """What a timing depends on besides the code: JAX, the devices, the CPU and its load.

    Every benchmark's JSON records it, so a ratio measured on one machine is read beside
    the machine it came from (the same seed can train differently on another CPU).
    Imports JAX: call it after :func:`force_host_devices`.
    """
    return {**machine_description(), "load_average_1min": os.getloadavg()[0]}
