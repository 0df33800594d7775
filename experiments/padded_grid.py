"""Train on the grid padded beyond both ends of the sum, then judge on the real grid.

Usage, from the repository root::

    python -m experiments.padded_grid [--scenario 8b8s] [--seed 0] [--pad-levels 4]
        [--approx LAYERS|none] [--epochs N] [--steps-per-epoch N]
        [--run-dir runs/padded-8b8s-pad4-seed0]
        [--out results/padded_grid] [--json]

Trains the scenario's preset (``TrainConfig.for_scenario``) on
:class:`~optinc_jax.encoding.padded_grid.PaddedGrid` (``--pad-levels`` virtual levels of the
most significant input on each side; not in the paper), with the preset's finishing and
refit moved after training and run on the real grid: both score the real grid, while the
trainer's own evaluation scores the padded set. It then evaluates the projected network
exhaustively on the real grid and, where inputs are still wrong, runs the preset's hinge
finishing and last-layer refit there. A killed run resumes from its checkpoint in
``--run-dir``.

Writes ``OUT/<scenario>-pad<P>-seed<S>.json`` (strict JSON): the wrong inputs of the real grid
after training, after the finishing and after the refit, the wrong virtual inputs, the
error histogram, the area ratio and the seconds of each part. ``--json`` prints it.
Measured (README, "Training recipe", item 19).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.encoding.padded_grid import make_padded_grid
from optinc_jax.learning.balance import target_classes
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.finish import finish_on_hard_set
from optinc_jax.learning.refit import refit_last_layer
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import load_run, train_onn
from optinc_jax.scenarios import as_scenario

__all__ = ["main", "train_padded"]


def train_padded(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    pad_levels: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains ``config`` on the padded grid; finishing and refit on the real grid.

    Args:
        config: the run's configuration; its ``finish_rounds`` and ``refit_iterations``
            run after training on the real grid (the training itself runs neither).
        run_dir: the training run's directory (resumed when it holds a checkpoint).
        pad_levels: virtual levels of the most significant input on each side.
        progress: show the trainer's progress bar.

    Returns:
        The JSON-ready record (see the module docstring).
    """
    scenario = as_scenario(config.scenario)
    grid = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    padded = make_padded_grid(grid, pad_levels)
    training = config.replace(finish_rounds=0, refit_iterations=0, stop_at_full_accuracy=False)
    tic = time.perf_counter()
    result = train_onn(training, run_dir, resume=True, progress=progress, dataset=padded)
    train_wall = time.perf_counter() - tic
    run = load_run(run_dir, dataset=padded)
    real = evaluate_exhaustive(run.apply_fn, run.params, grid)
    record: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": config.seed,
        "approx": list(run.approx_layers),
        "pad_levels": pad_levels,
        "padded_size": padded.size,
        "grid_size": grid.size,
        "epochs": run.epoch,
        "train_seconds": result.record["train_seconds"],
        "train_wall_seconds": train_wall,
        "area_ratio": result.record["area_ratio"],
        "wrong_padded": result.record["total"] - result.record["correct"],
        "wrong_after_training": real.total - real.correct,
    }
    record["wrong_virtual"] = record["wrong_padded"] - record["wrong_after_training"]
    params, wrong = run.params, record["wrong_after_training"]
    if wrong and config.finish_rounds:
        tic = time.perf_counter()
        finish = finish_on_hard_set(
            run.apply_fn,
            params,
            grid,
            approx_layers=run.approx_layers,
            rounds=config.finish_rounds,
            steps=config.finish_steps,
            learning_rate=config.finish_learning_rate,
            tolerance=config.finish_tolerance,
            slack=config.finish_slack,
            side=config.approx_side,
            refine_steps=config.refine_steps,
            classes=target_classes(grid) if config.finish_balance else None,
        )
        record["finish_seconds"] = time.perf_counter() - tic
        record["wrong_after_finish"] = wrong = finish.wrong_after
        params = finish.params
    last_free = scenario.num_matrices not in run.approx_layers
    if wrong and config.refit_iterations and last_free:
        tic = time.perf_counter()
        refit = refit_last_layer(
            run.apply_fn,
            params,
            grid,
            tolerance=config.refit_tolerance,
            iterations=config.refit_iterations,
        )
        record["refit_seconds"] = time.perf_counter() - tic
        params = refit.params
    final = evaluate_exhaustive(run.apply_fn, params, grid)
    record["wrong_after"] = final.total - final.correct
    record["accuracy_after"] = final.accuracy
    record["error_histogram_after"] = final.to_json()["error_histogram"]
    return record


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="8b8s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-levels", type=int, default=4)
    parser.add_argument("--approx", default=None, help="comma-separated layers, or none")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="override it")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--out", default="results/padded_grid")
    parser.add_argument("--json", action="store_true", help="print the result document")
    args = parser.parse_args(argv)
    try:
        overrides: dict[str, Any] = {"seed": args.seed}
        for field in ("approx", "epochs", "steps_per_epoch"):
            if getattr(args, field) is not None:
                overrides[field] = getattr(args, field)
        config = TrainConfig.for_scenario(args.scenario, **overrides)
        stem = f"{args.scenario}-pad{args.pad_levels}-seed{args.seed}"
        run_dir = args.run_dir or f"runs/padded-{stem}"
        record = train_padded(config, run_dir, pad_levels=args.pad_levels, progress=not args.json)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = write_json_atomically(Path(args.out) / f"{stem}.json", record)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(record, allow_nan=False))
    else:
        print(
            f"{stem}: {record['wrong_after_training']} of {record['grid_size']} real inputs "
            f"wrong after training, {record['wrong_after']} at the end; {path}"
        )


if __name__ == "__main__":
    main()
