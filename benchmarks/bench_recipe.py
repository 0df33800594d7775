"""The training recipe: time to the projected 100 %, and how an epoch's cost grows.

1. ``demo``: the 8b4s demo (every matrix approximated) trained with the paper's uniform
   sampling on the default schedule (``TrainConfig()``, the demo: the baseline) and with
   a candidate recipe (``--candidate``, TrainConfig fields as JSON; default the 8b4s
   preset, what ``make demo`` trains), each with seeds 0 and 1, alternating, in one run,
   every run in a fresh Python process as ``make demo`` (``--same-process``: in this one,
   sharing compiled programs; the preset then runs as this tree's ``optinc train``, what
   ``make demo`` runs); ``--revision REV`` adds ``make demo`` as commit REV trained it (its
   ``optinc train`` from a git worktree). Reports the epoch and training seconds of the
   first projected 100 % (``first_full_accuracy``), the smallest decision margin where
   each run stopped, the wall seconds of each run's process from start to exit (what a
   person waits for), and the ratios of the median times.
2. ``scaling``: for every Table I scenario, the cost of an epoch's parts measured on this
   machine (optimizer steps at the preset's batch size, or each of ``--batch-sizes``, the
   scoring pass per sample, one projection of the approximated matrices) and the epoch
   cost they add up to; the FLOPs of an epoch (2 x multiply-adds per sample, x 3 for a
   training step) give the rate reached.

Usage, from the repository root::

    python -m benchmarks.bench_recipe [--out DIR] [--seeds 0,1] [--candidate JSON]
        [--revision REV] [--same-process] [--skip-demo] [--skip-scaling]
        [--scenarios 8b4s,8b8s,8b16s,16b4s] [--batch-sizes preset,1024]

Writes ``OUT/bench_recipe.json`` and ``OUT/bench_recipe.png``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import contextlib
import itertools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from benchmarks import machine_environment
from optinc_jax import (
    TrainConfig,
    find_hard_samples,
    get_scenario,
    projection_diag_unitary,
    register_scenario,
    scenario_from_json,
    train_onn,
)
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.step import train_epoch
from optinc_jax.learning.trainer import build_training

__all__ = [
    "Revision",
    "SubsetDataset",
    "child_environment",
    "epoch_cost",
    "main",
    "time_to_full_accuracy",
]

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


class Revision(NamedTuple):
    """``make demo`` as a commit trained it.

    That commit's ``optinc train`` (its default config and code), run from a git worktree
    of this repository; ``rev=None``: this working tree's own ``optinc train``, what
    ``make demo`` runs now.
    """

    rev: str | None


REPOSITORY = Path(__file__).resolve().parents[1]
"""The repository the benchmark belongs to (the children run from it)."""


def _row(label: str, seed: int, record: dict) -> dict:
    """One run's row from its ``result.json`` record (this version's or an older one's).

    Records written before ``first_full_accuracy`` existed stopped at their first 100 %:
    that epoch and ``train_seconds`` are then the first 100 %, read from the history.
    """
    history = record["history"]
    first = record.get("first_full_accuracy")
    if "first_full_accuracy" not in record:
        full = [
            e for e, a in zip(history["eval_epoch"], history["accuracy"], strict=True) if a == 1.0
        ]
        stopped_there = full and full[0] == record["epochs"]
        first = (
            {"epoch": full[0], "train_seconds": record["train_seconds"]} if stopped_there else None
        )
    margins = history.get("min_margin")
    return {
        "label": label,
        "seed": seed,
        "first_full_accuracy": first,
        "epochs": record["epochs"],
        "accuracy": record["accuracy"],
        "train_seconds": record["train_seconds"],
        "stop_margin": margins[-1] if margins else None,
    }


def _timed(function, *args) -> tuple[Any, float]:
    """``function(*args)`` and the wall seconds it took."""
    tic = time.perf_counter()
    return function(*args), time.perf_counter() - tic


def median_time_to_full(times: Sequence[float | None]) -> float | None:
    """The median seconds to the first 100 % of some runs, runs that never got there included.

    ``None`` in ``times`` marks a run that never reached 100 %: it counts as slower than
    every run that did. Returns ``None`` when the median falls on such runs (or there are
    no runs).

    >>> median_time_to_full([3.0, None, 1.0, 2.0])
    2.5
    >>> median_time_to_full([None, 1.0]) is None
    True
    """
    ordered = sorted(math.inf if t is None else t for t in times)
    middle = statistics.median(ordered) if ordered else math.inf
    return None if math.isinf(middle) else middle


def child_environment(env: dict | None = None) -> dict:
    """The environment of a timed child: ``env`` (default this process's), uncached.

    Without the persistent compilation cache of JAX (``JAX_COMPILATION_CACHE_DIR``), so
    that every run pays all its compiling, as a first ``make demo`` does. A new dict.
    """
    env = dict(os.environ if env is None else env)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _run_child(command: list[str], env: dict | None = None) -> str:
    """Runs ``command`` (a child Python) from the repository; its stdout."""
    done = subprocess.run(
        command,
        cwd=REPOSITORY,
        env=child_environment(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command[:4])} ... exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done.stdout


def _train_in_child(config: TrainConfig, seed: int) -> dict:
    """``result.json`` of ``config`` with ``seed``, trained by a fresh Python process.

    What ``make demo`` pays: every compilation, none shared with another run.
    """
    job = {
        "config": config.replace(seed=seed).to_json(),
        "scenario": config.resolved_scenario().to_json(),
    }
    command = [sys.executable, "-m", "benchmarks.bench_recipe", "--one-run", json.dumps(job)]
    return json.loads(_run_child(command).strip().splitlines()[-1])


def _one_run(job_json: str) -> None:
    """The child of :func:`_train_in_child`: trains the job, prints its record as JSON."""
    job = json.loads(job_json)
    scenario = scenario_from_json(job["scenario"])
    try:
        known = get_scenario(scenario.name) == scenario
    except ValueError:
        known = False
    if not known:
        register_scenario(scenario, overwrite=True)
    with tempfile.TemporaryDirectory() as workdir:
        result = train_onn(TrainConfig.from_json(job["config"]), workdir, progress=False)
    print(json.dumps(result.record))


def _revision_in_child(worktree: Path, seed: int) -> dict:
    """``result.json`` of ``make demo``'s command (``optinc train``) at a worktree's commit.

    Run with ``seed`` in a fresh Python process that imports that commit's package.
    """
    code = (
        "import sys, optinc_jax; "
        "assert optinc_jax.__file__.startswith(sys.argv[1]), optinc_jax.__file__; "
        "from optinc_jax.cli import main; sys.argv[1:2] = []; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(worktree / "src")}
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-c", code, str(worktree / "src"), "train"]
        command += ["--out", str(Path(workdir) / "demo"), "--seed", str(seed), "--quiet"]
        _run_child(command, env)
        return json.loads((Path(workdir) / "demo" / "result.json").read_text())


def time_to_full_accuracy(
    configs: dict[str, "TrainConfig | Revision"],
    seeds: Sequence[int],
    *,
    fresh_process: bool = True,
) -> list[dict]:
    """Trains every config with every seed (alternating) and records the first 100 %.

    Args:
        configs: ``{label: config}``; each is run with ``seed`` replaced. A
            :class:`Revision` runs that commit's ``optinc train --seed S`` (its default
            config) from a temporary git worktree, always in a child process.
        seeds: the seeds.
        fresh_process: train every config in a child Python process, as ``make demo``
            does (no compilation shared between runs); ``False``: in this process (every
            run after the first reuses the programs the earlier ones compiled).

    Returns:
        One dict per run: ``label, seed, first_full_accuracy, epochs, accuracy,
        train_seconds, stop_margin`` (the smallest decision margin at the last evaluation;
        ``None`` for a revision that did not record it) and ``process_seconds``, the wall
        time of the run's child process from its start to its exit (imports, set-up, the
        training to its stop, the final report; ``None`` in this process).
    """
    rows = []
    with contextlib.ExitStack() as stack:
        worktrees = {
            label: stack.enter_context(_worktree(config.rev))
            for label, config in configs.items()
            if isinstance(config, Revision)
        }
        for seed, (label, config) in itertools.product(seeds, configs.items()):
            process_seconds = None
            if isinstance(config, Revision):
                record, process_seconds = _timed(_revision_in_child, worktrees[label], seed)
            elif fresh_process:
                record, process_seconds = _timed(_train_in_child, config, seed)
            else:
                with tempfile.TemporaryDirectory() as workdir:
                    record = train_onn(config.replace(seed=seed), workdir, progress=False).record
            rows.append({**_row(label, seed, record), "process_seconds": process_seconds})
            first, margin = rows[-1]["first_full_accuracy"], rows[-1]["stop_margin"]
            print(
                f"{label}, seed {seed}: "
                + (
                    f"100 % at epoch {first['epoch']}, {first['train_seconds']:.1f} s"
                    if first
                    else ""
                )
                + f" (final {100 * rows[-1]['accuracy']:.4f} %"
                + ("" if margin is None else f", margin {margin:.3f}")
                + ("" if process_seconds is None else f", process {process_seconds:.1f} s")
                + ")",
                flush=True,
            )
    return rows


@contextlib.contextmanager
def _worktree(rev: str | None):
    """A temporary detached git worktree of this repository at ``rev`` (removed after).

    ``None``: the repository itself, as it is.
    """
    if rev is None:
        yield REPOSITORY
        return
    with tempfile.TemporaryDirectory() as parent:
        path = Path(parent) / "worktree"
        added = subprocess.run(
            ["git", "-C", str(REPOSITORY), "worktree", "add", "--detach", str(path), rev],
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode:
            raise RuntimeError(
                f"--revision {rev!r}: git worktree add failed: {added.stderr.strip()[-500:]}"
            )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(REPOSITORY), "worktree", "remove", "--force", str(path)],
                check=False,
                capture_output=True,
            )


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

    demo, scaling = report.get("demo"), report.get("scaling")
    panels = [part for part in (demo, scaling) if part]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.5 * max(len(panels), 1), 4.5))
    axes = list(np.atleast_1d(axes))
    if demo:
        axis = axes.pop(0)
        labels = list(dict.fromkeys(row["label"] for row in demo["runs"]))
        for index, label in enumerate(labels):
            rows = [r for r in demo["runs"] if r["label"] == label and r["first_full_accuracy"]]
            axis.scatter(
                [r["first_full_accuracy"]["epoch"] for r in rows],
                [r["first_full_accuracy"]["train_seconds"] for r in rows],
                s=60,
                color=f"C{index}",
                label=label,
            )
        ratios = [("baseline", demo["time_ratio"])]
        if "revision" in demo:
            ratios.append((demo["revision"], demo["time_ratio_to_revision"]))
        process = "a fresh process per run" if demo.get("fresh_process") else "one process"
        axis.set(
            xlabel="epoch of the first projected 100 %",
            ylabel="training seconds to it",
            title=f"8b4s demo ({process}): median time of the candidate\n/ "
            + ", / ".join(
                f"{name} {'-' if ratio is None else f'{ratio:.3f}'}" for name, ratio in ratios
            ),
        )
        axis.legend(fontsize=8)
    if scaling:
        axis = axes.pop(0)
        names = [
            f"{row['scenario']}\n{row['size']:,}\nbatch {row['batch_size']}" for row in scaling
        ]
        axis.bar(names, [row["epoch_seconds"] for row in scaling], color="C2")
        axis.set_yscale("log")
        axis.set(ylabel=f"seconds per epoch ({report['backend']})", title="Cost of one epoch")
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
    parser.add_argument(
        "--revision",
        default=None,
        help="also time make demo as this git commit trained it (its optinc train, its "
        "default config), e.g. the commit before a change",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="train every config in this process (later runs reuse compiled programs) "
        "instead of one fresh process per run, as make demo",
    )
    parser.add_argument("--one-run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--scenarios", default="8b4s,8b8s,8b16s,16b4s")
    parser.add_argument(
        "--batch-sizes",
        default="preset",
        help="comma-separated batch sizes of the scaling part; 'preset': the scenario's",
    )
    args = parser.parse_args(argv)
    if args.one_run is not None:
        _one_run(args.one_run)
        return
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
        # fresh processes: the preset as make demo trains it, this tree's optinc train
        preset = Revision(None) if not args.same_process else TrainConfig.for_scenario("8b4s")
        configs = {
            "uniform, TrainConfig() (baseline)": TrainConfig(),
            **(
                {"8b4s preset (make demo)": preset}
                if args.candidate is None
                else {f"candidate {args.candidate}": TrainConfig(**json.loads(args.candidate))}
            ),
        }
        if args.revision is not None:
            configs[f"make demo at {args.revision}"] = Revision(args.revision)
        try:
            rows = time_to_full_accuracy(
                configs,
                [int(s) for s in args.seeds.split(",")],
                fresh_process=not args.same_process,
            )
        except RuntimeError as error:  # a child that failed, an unknown revision
            parser.exit(1, f"bench_recipe: {error}\n")
        medians, unreached = {}, {}
        for label in configs:
            times = [
                r["first_full_accuracy"]["train_seconds"] if r["first_full_accuracy"] else None
                for r in rows
                if r["label"] == label
            ]
            medians[label] = median_time_to_full(times)
            unreached[label] = times.count(None)
        baseline, candidate, *revision = medians.values()
        processes = {
            label: statistics.median(times)
            if None not in (times := [r["process_seconds"] for r in rows if r["label"] == label])
            else None
            for label in configs
        }
        whole_baseline, whole_candidate, *whole_revision = processes.values()
        report["demo"] = {
            "fresh_process": not args.same_process,
            "runs": rows,
            "median_seconds": medians,
            # runs that never reached 100 % count as slower than every run that did; a
            # median among them is None, and so is every ratio with it
            "unreached_runs": unreached,
            "time_ratio": candidate / baseline if baseline and candidate else None,
            # the whole run as a person waits for it (None in one process)
            "median_process_seconds": processes,
            "process_ratio": (
                whole_candidate / whole_baseline if whole_baseline and whole_candidate else None
            ),
        }
        print(f"time to 100 %, candidate / baseline: {report['demo']['time_ratio']}")
        print(f"whole process, candidate / baseline: {report['demo']['process_ratio']}")
        if revision:
            old, whole_old = revision[0], whole_revision[0]
            report["demo"]["revision"] = args.revision
            report["demo"]["time_ratio_to_revision"] = (
                candidate / old if old and candidate else None
            )
            report["demo"]["process_ratio_to_revision"] = (
                whole_candidate / whole_old if whole_old and whole_candidate else None
            )
            ratio = report["demo"]["time_ratio_to_revision"]
            print(f"time to 100 %, candidate / {args.revision}: {ratio}")
            ratio = report["demo"]["process_ratio_to_revision"]
            print(f"whole process, candidate / {args.revision}: {ratio}")
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
