"""Training and exhaustive-evaluation speed.

1. Time and epochs until the projected 8b4s ONN (every layer approximated) first reaches
   100 % exhaustive accuracy, with the default training config.
2. Exhaustive evaluation throughput (samples/s) for several chunk sizes, and the same
   throughput as FLOP/s relative to this machine's dense float32 matmul peak, measured in
   the same run (the baseline).

Usage, from the repository root::

    python -m benchmarks.bench_train [--out DIR] [--skip-train] [--scenario 8b8s]
        [--chunks 4096,16384,65536,262144]

Writes ``OUT/bench_train.json``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks import machine_environment
from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.onn import build_onn, onn_apply_fn
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import train_onn
from optinc_jax.scenarios import Scenario, as_scenario, get_scenario


def matmul_peak_flops(sizes=(1024, 2048, 4096), repeats: int = 10) -> float:
    """Best float32 FLOP/s of jitted square matrix products over a few sizes."""
    product = jax.jit(lambda x: x @ x)
    best_rate = 0.0
    for size in sizes:
        a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
        product(a).block_until_ready()
        for _ in range(repeats):
            tic = time.perf_counter()
            product(a).block_until_ready()
            best_rate = max(best_rate, 2 * size**3 / (time.perf_counter() - tic))
    return best_rate


def forward_flops_per_sample(layers) -> int:
    """Multiply-adds of one ONN forward, times two."""
    return 2 * sum(a * b for a, b in itertools.pairwise(layers))


def evaluation_throughput(scenario: str | Scenario, chunk_sizes, repeats: int = 2) -> list[dict]:
    """Samples/s of exhaustive evaluation of a randomly initialized ONN per chunk size."""
    scenario = as_scenario(scenario)
    spec = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    apply_fn, params = onn_apply_fn(
        build_onn(scenario.layers, symbols_per_input=spec.symbols_per_input)
    )
    rows = []
    for chunk in chunk_sizes:
        evaluate_exhaustive(apply_fn, params, spec, chunk_size=chunk)  # compile
        best = float("inf")
        for _ in range(repeats):
            tic = time.perf_counter()
            evaluate_exhaustive(apply_fn, params, spec, chunk_size=chunk)
            best = min(best, time.perf_counter() - tic)
        rows.append({"chunk_size": chunk, "seconds": best, "samples_per_s": spec.size / best})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m benchmarks.bench_train --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--scenario", default="8b8s", help="scenario for evaluation speed")
    parser.add_argument("--chunks", default="4096,16384,65536,262144")
    args = parser.parse_args(argv)

    report: dict = {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "environment": machine_environment(),
    }
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as workdir:
            result = train_onn(TrainConfig(scenario="8b4s"), workdir, progress=True)
        report["train"] = {
            "scenario": "8b4s",
            "accuracy": result.evaluation.accuracy,
            "reached_100_percent": result.evaluation.correct == result.evaluation.total,
            "epochs": result.epochs,
            "train_seconds": result.record["train_seconds"],
            "config": result.record["config"],
        }
        print(
            f"8b4s: {100 * result.evaluation.accuracy:.5f} % after {result.epochs} epochs, "
            f"{result.record['train_seconds']:.1f} s of training"
        )

    peak = matmul_peak_flops()
    flops = forward_flops_per_sample(get_scenario(args.scenario).layers)
    rows = evaluation_throughput(args.scenario, [int(c) for c in args.chunks.split(",")])
    for row in rows:
        row["flops_per_s"] = row["samples_per_s"] * flops
        row["fraction_of_matmul_peak"] = row["flops_per_s"] / peak
    report["matmul_peak_flops_per_s"] = peak
    report["evaluation"] = {"scenario": args.scenario, "flops_per_sample": flops, "rows": rows}
    print(f"dense float32 matmul peak (best of 1024/2048/4096^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'chunk':>8}  {'samples/s':>12}  {'GFLOP/s':>8}  {'of peak':>8}")
    for row in rows:
        print(
            f"{row['chunk_size']:>8}  {row['samples_per_s']:>12,.0f}  "
            f"{row['flops_per_s'] / 1e9:>8.1f}  {100 * row['fraction_of_matmul_peak']:>7.1f}%"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.out / "bench_train.json", report)


if __name__ == "__main__":
    main()
