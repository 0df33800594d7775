"""The training recipe: time to the projected 100 %, and how an epoch's cost grows.

1. ``demo``: the 8b4s demo (every matrix approximated) trained with the paper's uniform
   sampling on the default schedule (``TrainConfig()``, the demo: the baseline) and with
   a candidate recipe (``--candidate``, TrainConfig fields as JSON; default the 8b4s
   preset, what ``make demo`` trains), each with seeds 0 and 1, alternating, in one run.
   Reports the epoch and training seconds of the first projected 100 %
   (``first_full_accuracy``), the smallest decision margin where each run stopped, and
   the ratio of the median times.
2. ``scaling``: for every Table I scenario, the cost of an epoch's parts measured on this
   machine (optimizer steps at the preset's batch size, or each of ``--batch-sizes``, the
   scoring pass per sample, one projection of the approximated matrices) and the epoch
   cost they add up to; the FLOPs of an epoch (2 x multiply-adds per sample, x 3 for a
   training step) give the rate reached.

Usage, from the repository root::

    python -m benchmarks.bench_recipe [--out DIR] [--seeds 0,1] [--candidate JSON]
        [--skip-demo] [--skip-scaling] [--scenarios 8b4s,8b8s,8b16s,16b4s]
        [--batch-sizes preset,1024]

Writes ``OUT/bench_recipe.json`` and ``OUT/bench_recipe.png``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from benchmarks import machine_environment
from optinc_jax import (
    TrainConfig,
    find_hard_samples,
    get_scenario,
    projection_diag_unitary,
    train_onn,
)
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.step import train_epoch
from optinc_jax.learning.trainer import build_training

__all__ = ["SubsetDataset", "epoch_cost", "main", "time_to_full_accuracy"]

STEP_COUNTS = (20, 120)
"""Optimizer steps of the two timed calls per scenario: their difference gives the cost of
a step, free of the epoch's fixed costs (the draw of the indices, the call itself)."""

SCORE_SAMPLES = 1 << 16
"""Samples of the timed scoring pass per scenario."""


class SubsetDataset(NamedTuple):
    """The first ``size`` samples of a dataset (a Dataset itself, for timing)."""

    base: Any
    size: int

    @property
    def bits(self) -> int:
        """Bit width of the targets."""
        return self.base.bits

    def samples(self, indices):
        """The base dataset's samples at ``indices``."""
        return self.base.samples(indices)


def time_to_full_accuracy(configs: dict[str, TrainConfig], seeds: Sequence[int]) -> list[dict]:
    """Trains every config with every seed (alternating) and records the first 100 %.

    Args:
        configs: ``{label: config}``; each is run with ``seed`` replaced.
        seeds: the seeds.

    Returns:
        One dict per run: ``label, seed, first_full_accuracy, epochs, accuracy,
        train_seconds, stop_margin`` (the smallest decision margin at the last evaluation).
    """
    rows = []
    for seed, (label, config) in itertools.product(seeds, configs.items()):
        with tempfile.TemporaryDirectory() as workdir:
            result = train_onn(config.replace(seed=seed), workdir, progress=False)
        history = result.record["history"]
        rows.append(
            {
                "label": label,
                "seed": seed,
                "first_full_accuracy": result.record["first_full_accuracy"],
                "epochs": result.epochs,
                "accuracy": result.evaluation.accuracy,
                "train_seconds": result.record["train_seconds"],
                "stop_margin": history["min_margin"][-1],
            }
        )
        first = rows[-1]["first_full_accuracy"]
        print(
            f"{label}, seed {seed}: "
            + (f"100 % at epoch {first['epoch']}, {first['train_seconds']:.1f} s" if first else "")
            + f" (final {100 * result.evaluation.accuracy:.4f} %, margin "
            f"{rows[-1]['stop_margin']:.3f})",
            flush=True,
        )
    return rows


def _best_time(function, repeats: int = 3) -> float:
    jax.block_until_ready(function())
    best = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(function())
        best = min(best, time.perf_counter() - tic)
    return best


def epoch_cost(
    scenario: str, *, approx: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """The parts of one training epoch of a scenario, timed on this machine.

    Args:
        scenario: a registered scenario name.
        approx: its approximated matrices (``None``: the scenario's own).
        batch_size: samples per step; ``None``: the scenario's preset.

    Returns:
        ``scenario, size, steps_per_epoch, step_seconds`` (the slope between two step
        counts), ``epoch_fixed_seconds`` (the rest of a call: the index draw),
        ``score_seconds_per_sample, projection_seconds, epoch_seconds`` (their sum over
        one epoch: every step, the fixed part, one scoring pass, one projection) and
        ``train_flops_per_s`` (rate of the steps).
    """
    times = {}
    for count in STEP_COUNTS:
        sizes = {} if batch_size is None else {"batch_size": batch_size}
        config = TrainConfig.for_scenario(scenario, approx=approx, steps_per_epoch=count, **sizes)
        setup = build_training(config)
        state = [setup.initial_state]

        def steps(config=config, setup=setup, state=state, count=count):
            state[0], loss = train_epoch(
                state[0],
                jax.random.key(0),
                apply_fn=setup.apply_fn,
                dataset=setup.dataset,
                config=config,
                stage=1,
                steps=count,
            )
            return loss

        times[count] = _best_time(steps)
    few, many = STEP_COUNTS
    step_seconds = (times[many] - times[few]) / (many - few)
    fixed_seconds = max(times[few] - few * step_seconds, 0.0)
    subset = SubsetDataset(setup.dataset, min(SCORE_SAMPLES, setup.dataset.size))
    params = state[0].params
    score = _best_time(
        lambda: find_hard_samples(setup.apply_fn, params, subset, margin=0.25)[0].count
    )
    projection = (
        _best_time(lambda: projection_diag_unitary(params, setup.approx_layers), repeats=2)
        if setup.approx_layers
        else 0.0
    )
    full_steps = setup.dataset.size // config.batch_size
    macs = sum(a * b for a, b in itertools.pairwise(setup.scenario.layers))
    return {
        "scenario": scenario,
        "approx": list(setup.approx_layers),
        "layers": setup.scenario.layers_string,
        "size": setup.dataset.size,
        "batch_size": config.batch_size,
        "steps_per_epoch": full_steps,
        "step_seconds": step_seconds,
        "score_seconds_per_sample": score / subset.size,
        "projection_seconds": projection,
        "epoch_fixed_seconds": fixed_seconds,
        "epoch_seconds": full_steps * step_seconds
        + fixed_seconds
        + setup.dataset.size * score / subset.size
        + projection,
        "train_flops_per_s": 6 * macs * config.batch_size / step_seconds,
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    demo = report.get("demo")
    if demo:
        labels = list(dict.fromkeys(row["label"] for row in demo["runs"]))
        for index, label in enumerate(labels):
            rows = [r for r in demo["runs"] if r["label"] == label and r["first_full_accuracy"]]
            axes[0].scatter(
                [r["first_full_accuracy"]["epoch"] for r in rows],
                [r["first_full_accuracy"]["train_seconds"] for r in rows],
                s=60,
                color=f"C{index}",
                label=label,
            )
        axes[0].set(
            xlabel="epoch of the first projected 100 %",
            ylabel="training seconds to it",
            title=f"8b4s demo: candidate / baseline time = {demo['time_ratio']}",
        )
        axes[0].legend(fontsize=8)
    scaling = report.get("scaling")
    if scaling:
        names = [
            f"{row['scenario']}\n{row['size']:,}\nbatch {row['batch_size']}" for row in scaling
        ]
        axes[1].bar(names, [row["epoch_seconds"] for row in scaling], color="C2")
        axes[1].set_yscale("log")
        axes[1].set(ylabel=f"seconds per epoch ({report['backend']})", title="Cost of one epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m benchmarks.bench_recipe --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--candidate",
        default=None,
        help="TrainConfig fields of the candidate recipe, as JSON [default: the 8b4s "
        "preset, what make demo trains]",
    )
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--scenarios", default="8b4s,8b8s,8b16s,16b4s")
    parser.add_argument(
        "--batch-sizes",
        default="preset",
        help="comma-separated batch sizes of the scaling part; 'preset': the scenario's",
    )
    args = parser.parse_args(argv)
    try:
        batch_sizes = [
            None if size == "preset" else int(size) for size in args.batch_sizes.split(",")
        ]
    except ValueError:
        parser.error(f"--batch-sizes must be 'preset' or integers, got {args.batch_sizes!r}")
    report: dict[str, Any] = {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "environment": machine_environment(),
    }
    if not args.skip_demo:
        configs = {
            "uniform, TrainConfig() (baseline)": TrainConfig(),
            **(
                {"8b4s preset (make demo)": TrainConfig.for_scenario("8b4s")}
                if args.candidate is None
                else {f"candidate {args.candidate}": TrainConfig(**json.loads(args.candidate))}
            ),
        }
        rows = time_to_full_accuracy(configs, [int(s) for s in args.seeds.split(",")])
        medians = {}
        for label in configs:
            times = [
                r["first_full_accuracy"]["train_seconds"] if r["first_full_accuracy"] else None
                for r in rows
                if r["label"] == label
            ]
            medians[label] = None if None in times else statistics.median(times)
        baseline, candidate = medians.values()
        report["demo"] = {
            "runs": rows,
            "median_seconds": medians,
            # None when a run of either recipe never reached 100 %
            "time_ratio": candidate / baseline if baseline and candidate else None,
        }
        print(f"time to 100 %, candidate / baseline: {report['demo']['time_ratio']}")
    if not args.skip_scaling:
        report["scaling"] = []
        for name in args.scenarios.split(","):
            get_scenario(name)
            for batch_size in batch_sizes:
                row = epoch_cost(name, batch_size=batch_size)
                report["scaling"].append(row)
                print(
                    f"{name} batch {row['batch_size']}: {row['size']:,} samples, "
                    f"{row['step_seconds'] * 1e3:.2f} ms/step, "
                    f"epoch {row['epoch_seconds']:.1f} s",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.out / "bench_recipe.json", report)
    _plot(report, args.out / "bench_recipe.png")


if __name__ == "__main__":
    main()
