"""Accelerator check: train 8b8s (approximated) to projected 100 %, time a 16b4s evaluation.

1. Trains the 8b8s ONN with its approximated matrices (2-7) with the scenario's preset
   (``TrainConfig.for_scenario``; stop at the first projected 100 %), data-parallel over
   all accelerators, and stops after ``--train-minutes`` of wall time (then evaluates the
   last checkpoint). Records the wall time and accuracy of every epoch: the time an
   epoch costs on this machine, the compilation in the first.
2. Evaluates a randomly initialized 16b4s ONN exhaustively (13.8 M samples), timed
   (compilation separate), sharded over all accelerators.

Usage, from the repository root::

    python -m experiments.accelerator_check [--config smoke|quick|full] [--quick]
        [--out runs/accelerator_check] [--train-scenario 8b8s] [--eval-scenario 16b4s]
        [--epochs N] [--steps-per-epoch N] [--train-minutes M] [--chunk-size N]

The default ``full`` preset aims at about 8 minutes on a GPU; ``--quick`` (one epoch of 5
steps of 8b4s, an 8b4s evaluation) takes about a minute on a CPU. Presets in
:mod:`experiments.configs`. The training directory ``OUT/train`` must not hold an earlier
run (a check measures a fresh one). Writes ``OUT/accelerator_check.json``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from experiments.configs import (
    AcceleratorCheckConfig,
    add_preset_arguments,
    check_preset,
    preset_name,
)
from experiments.devices import data_mesh
from experiments.wall_clock import EpochClock, TimeUp
from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.onn import build_onn, onn_apply_fn
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import load_run, train_onn
from optinc_jax.scenarios import Scenario, as_scenario

__all__ = ["check_evaluation", "check_training", "main", "run", "train_config"]


def train_config(config: AcceleratorCheckConfig) -> TrainConfig:
    """The training run of a check: the scenario's preset, checkpointed and evaluated often.

    After every epoch, stage 1 too whatever the preset's ``stage1_eval_every``: the check
    reports the accuracy of every epoch.
    """
    train = TrainConfig.for_scenario(
        config.train_scenario,
        steps_per_epoch=config.steps_per_epoch,
        checkpoint_every=1,
        eval_every=1,
        stage1_eval_every=1,
    )
    if config.epochs is not None:
        train = train.replace(
            epochs=config.epochs, switch_epoch=min(train.switch_epoch, config.epochs)
        )
    return train


def check_training(config: TrainConfig, workdir: Path, limit_s: float) -> dict:
    """Trains until 100 %, the epoch budget or the time limit; returns the measurements."""
    clock = EpochClock(limit_s)
    try:
        record = train_onn(config, workdir, on_epoch_end=clock, mesh=data_mesh()).record
        stopped = "100 %" if record["correct"] == record["total"] else "epoch budget"
    except TimeUp:
        loaded = load_run(workdir)  # checkpoint_every=1: the last epoch is on disk
        evaluation = evaluate_exhaustive(
            loaded.apply_fn,
            loaded.params,
            loaded.dataset,
            chunk_size=config.eval_chunk_size,
            mesh=data_mesh(),
        )
        record = {"epochs": loaded.epoch, **evaluation.to_json()}
        stopped = f"time limit {limit_s:.0f} s"
    return {
        "scenario": config.resolved_scenario().name,
        "stopped_by": stopped,
        "epochs": record["epochs"],
        "accuracy": record["accuracy"],
        "correct": record["correct"],
        "total": record["total"],
        "error_histogram": record["error_histogram"],
        "wall_seconds": clock.seconds,
        # wall seconds at the end of each epoch (the first holds the compilation) and the
        # projected accuracy evaluated there (every epoch: eval_every=1)
        "epoch_end_seconds": clock.epoch_ends,
        "epoch_accuracy": clock.history.get("accuracy", []),
        "seconds_per_epoch_after_first": clock.seconds_per_epoch_after_first(),
        "first_full_accuracy": record.get("first_full_accuracy"),
        "config": config.to_json(),
    }


def check_evaluation(scenario: str | Scenario, chunk_size: int) -> dict:
    """Times one exhaustive evaluation of a random ONN (compiled by a first call)."""
    scenario = as_scenario(scenario)
    spec = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    apply_fn, params = onn_apply_fn(
        build_onn(scenario.layers, symbols_per_input=spec.symbols_per_input)
    )
    mesh = data_mesh()
    tic = time.perf_counter()
    evaluate_exhaustive(apply_fn, params, spec, chunk_size=chunk_size, mesh=mesh)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    result = evaluate_exhaustive(apply_fn, params, spec, chunk_size=chunk_size, mesh=mesh)
    seconds = time.perf_counter() - tic
    return {
        "scenario": scenario.name,
        "samples": spec.size,
        "chunk_size": chunk_size,
        "first_call_seconds": first,
        "seconds": seconds,
        "samples_per_s": spec.size / seconds,
        "accuracy_random_onn": result.accuracy,
        "devices": 1 if mesh is None else mesh.size,
    }


def run(config: AcceleratorCheckConfig, workdir: str | Path) -> dict:
    """Runs both checks and writes ``workdir/accelerator_check.json``.

    Args:
        config: what to train and evaluate, e.g. ``experiments.configs.check_preset("quick")``.
        workdir: output directory; the training run lies in ``workdir/train`` (which must
            not hold an earlier run).

    Returns:
        The report written to the JSON file.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = {
        "preset": config.preset,
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "training": check_training(
            train_config(config), workdir / "train", 60 * config.train_minutes
        ),
        "evaluation": check_evaluation(config.eval_scenario, config.chunk_size),
    }
    write_json_atomically(workdir / "accelerator_check.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.accelerator_check --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.accelerator_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/accelerator_check"))
    add_preset_arguments(parser)
    parser.add_argument("--train-scenario", help="registered scenario to train (full: 8b8s)")
    parser.add_argument("--eval-scenario", help="registered scenario to evaluate (full: 16b4s)")
    parser.add_argument("--epochs", type=int, help="training epochs (full: TrainConfig's)")
    parser.add_argument("--steps-per-epoch", type=int, help="(full: one pass over the data)")
    parser.add_argument("--train-minutes", type=float, help="training time limit (full: 6)")
    parser.add_argument("--chunk-size", type=int, help="evaluation chunk (full: 262144)")
    args = parser.parse_args(argv)
    overrides = {
        "train_scenario": args.train_scenario,
        "eval_scenario": args.eval_scenario,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "train_minutes": args.train_minutes,
        "chunk_size": args.chunk_size,
    }
    config = check_preset(preset_name(parser, args)).replace(
        **{name: value for name, value in overrides.items() if value is not None}
    )
    print(json.dumps(run(config, args.out), indent=2, allow_nan=False))


if __name__ == "__main__":
    main()
