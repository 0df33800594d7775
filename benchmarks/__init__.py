"""Benchmarks: speed and memory, each against a baseline timed in the same run.

Run them from the repository root (each writes ``OUT/<name>.json``):

- ``python -m benchmarks.bench_mesh --out runs/bench [--quick]``: the photonic core
  (unitary, decomposition, forward) against per-MZI NumPy loops and ``interferometer``.
- ``python -m benchmarks.bench_train --out runs/bench``: time to a projected 100 % (8b4s)
  and exhaustive-evaluation throughput against the dense matmul peak.
- ``python -m benchmarks.bench_scale --out runs/bench [--quick]``: evaluation throughput
  over 1-8 devices, training speed per scenario, evaluation memory.

They use the package's public functions only.
"""
