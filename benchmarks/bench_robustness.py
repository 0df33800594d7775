"""Benchmark noisy exhaustive evaluations: trials vmapped against a Python loop over trials.

One noisy exhaustive evaluation = one Monte Carlo trial of a robustness sweep: a perturbed
circuit (its meshes rebuilt from the perturbed phases) evaluated on every sample of the
dataset. Both ways are timed in the same run, after warm-up (compilation), on public
functions only:

- ``vmapped``: :func:`optinc_jax.learning.deployment.robustness_sweep` with ``trials``
  keys at one strength (one jitted call, trials vmapped, dataset chunked);
- ``loop``: :func:`optinc_jax.learning.deployment.trial_counts` once per key in a Python
  loop (one jitted call per trial).

They must give the same counts (checked). Reported: evaluations per second each way and
their ratio, for the chip-level ``phase`` model and the output-level ``receiver`` model.
The circuit is an 8b4s-shaped network with random weights (4-64-128-256-128-64-4, its
approximated matrices projected), or ``--circuit FILE`` (a circuit, export or run dir).

Usage: ``python -m benchmarks.bench_robustness --out runs/bench [--quick]``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import machine_environment
from optinc_jax.learning.deployment import (
    load_circuit_or_deploy,
    robustness_sweep,
    trial_counts,
)
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.photonics.approx import approx_diag_unitary
from optinc_jax.photonics.circuit import compile_circuit

LAYERS = (4, 64, 128, 256, 128, 64, 4)
MODELS = {"phase": 0.005, "receiver": 0.1}


def random_circuit(approx: tuple[int, ...]):
    """An 8b4s-shaped circuit with random weights (approximated matrices projected)."""
    rng = np.random.default_rng(0)
    arrays = {
        "input_shift": 1.5,
        "input_scale": 0.7,
        "output_scale": 1.0,
        "output_shift": 1.5,
        "bits": np.int64(8),
        "servers": np.int64(4),
        "inputs": np.int64(4),
        "approx_layers": np.asarray(approx, np.int64),
    }
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(LAYERS)):
        weight = (rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
        if index + 1 in approx:
            weight = np.asarray(approx_diag_unitary(weight))
        arrays[f"weights_{index}"] = weight
        arrays[f"biases_{index}"] = (0.1 * rng.normal(size=fan_out)).astype(np.float32)
    return compile_circuit(arrays)


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up: compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def bench_model(circuit, model: str, strength: float, trials: int, repeats: int) -> dict:
    key = jax.random.key(0)
    keys = jax.random.split(key, trials)
    outcome = {}

    def vmapped():
        outcome["vmapped"] = robustness_sweep(circuit, model, [strength], trials, key)

    def loop():
        outcome["loop"] = [trial_counts(circuit, model, strength, k)[0] for k in keys]

    vmapped_time = timed(vmapped, repeats)
    loop_time = timed(loop, repeats)
    samples = outcome["vmapped"]["samples"]
    vmapped_counts = [round(a * samples) for a in outcome["vmapped"]["accuracy_trials"][0]]
    rate_vmapped = trials / vmapped_time["median_s"]
    rate_loop = trials / loop_time["median_s"]
    return {
        "model": model,
        "strength": strength,
        "trials": trials,
        "samples_per_evaluation": samples,
        "vmapped": {**vmapped_time, "evaluations_per_s": rate_vmapped},
        "loop": {**loop_time, "evaluations_per_s": rate_loop},
        "speedup_vmapped_over_loop": rate_vmapped / rate_loop,
        "same_counts": vmapped_counts == outcome["loop"],
        "mean_accuracy": float(np.mean(outcome["vmapped"]["accuracy_trials"][0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--quick", action="store_true", help="8 trials, 1 repeat")
    parser.add_argument("--circuit", help="circuit .npz, weights .npz or run directory")
    parser.add_argument("--approx", default="", help="approximated matrices, e.g. 1,2,3,4,5,6")
    args = parser.parse_args()
    trials, repeats = (8, 1) if args.quick else (32, 3)
    if args.circuit:
        circuit, source = load_circuit_or_deploy(args.circuit), args.circuit
    else:
        approx = tuple(int(i) for i in args.approx.split(",") if i)
        circuit, source = random_circuit(approx), f"random {LAYERS} approx {approx}"
    rows = []
    for model, strength in MODELS.items():
        row = bench_model(circuit, model, strength, trials, repeats)
        rows.append(row)
        print(
            f"{model:9s} {trials} trials: vmapped {row['vmapped']['evaluations_per_s']:.2f}/s, "
            f"loop {row['loop']['evaluations_per_s']:.2f}/s, ratio "
            f"{row['speedup_vmapped_over_loop']:.2f}x, same counts: {row['same_counts']}",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "noisy exhaustive evaluations per second, vmapped vs Python loop",
        "circuit": source,
        "devices": [str(d) for d in jax.devices()],
        "environment": machine_environment(),
        "rows": rows,
    }
    path = write_json_atomically(args.out / "bench_robustness.json", document)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
