"""Accelerator check: train 8b8s (approximated) to projected 100 %, time a 16b4s evaluation.

1. Trains the 8b8s ONN with its approximated matrices (2-7) with the default config
   (stop at the first projected 100 %), data-parallel over all accelerators, and stops
   after ``--train-minutes`` of wall time (then evaluates the last checkpoint).
2. Evaluates a randomly initialized 16b4s ONN exhaustively (13.8 M samples), timed
   (compilation separate), sharded over all accelerators.

On a GPU the defaults aim at about 8 minutes in all. On CPU shorten it, e.g. (one line)::

    python experiments/accelerator_check.py --out runs/check
        --epochs 1 --steps-per-epoch 5 --train-scenario 8b4s --eval-scenario 8b4s

Writes ``OUT/accelerator_check.json``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import time
from pathlib import Path

import jax

from common import data_mesh
from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.onn import build_onn, onn_apply_fn
from optinc_jax.learning.train import TrainConfig, load_run, run
from optinc_jax.scenarios import get_scenario


class _TimeUp(Exception):
    pass


def check_training(config: TrainConfig, workdir: Path, limit_s: float) -> dict:
    """Trains until 100 %, the epoch budget or the time limit; returns the measurements."""
    tic = time.perf_counter()

    def stop_when_late(epoch: int, history: dict) -> None:
        if time.perf_counter() - tic > limit_s:
            raise _TimeUp

    try:
        record = run(config, workdir, on_epoch_end=stop_when_late, mesh=data_mesh()).record
        stopped = "100 %" if record["correct"] == record["total"] else "epoch budget"
    except _TimeUp:
        loaded = load_run(workdir)  # checkpoint_every=1: the last epoch is on disk
        evaluation = evaluate_exhaustive(
            loaded.apply_fn, loaded.params, loaded.spec, chunk_size=config.eval_chunk_size
        )
        record = {"epochs": loaded.epoch, **evaluation.to_json()}
        stopped = f"time limit {limit_s:.0f} s"
    return {
        "scenario": config.scenario,
        "stopped_by": stopped,
        "epochs": record["epochs"],
        "accuracy": record["accuracy"],
        "correct": record["correct"],
        "total": record["total"],
        "error_histogram": record["error_histogram"],
        "wall_seconds": time.perf_counter() - tic,
        "config": {"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch},
    }


def check_evaluation(scenario_name: str, chunk_size: int) -> dict:
    """Times one exhaustive evaluation of a random ONN (compiled by a first call)."""
    scenario = get_scenario(scenario_name)
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
        "scenario": scenario_name,
        "samples": spec.size,
        "chunk_size": chunk_size,
        "first_call_seconds": first,
        "seconds": seconds,
        "samples_per_s": spec.size / seconds,
        "accuracy_random_onn": result.accuracy,
        "devices": 1 if mesh is None else mesh.size,
    }


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/accelerator_check"))
    parser.add_argument("--train-scenario", default="8b8s")
    parser.add_argument("--eval-scenario", default="16b4s")
    parser.add_argument("--epochs", type=int, help="default: TrainConfig's")
    parser.add_argument("--steps-per-epoch", type=int, help="default: one pass over the data")
    parser.add_argument("--train-minutes", type=float, default=6.0)
    parser.add_argument("--chunk-size", type=int, default=1 << 18)
    args = parser.parse_args()

    config = TrainConfig(
        scenario=args.train_scenario, steps_per_epoch=args.steps_per_epoch, checkpoint_every=1
    )
    if args.epochs is not None:
        config = config.replace(
            epochs=args.epochs, switch_epoch=min(config.switch_epoch, args.epochs)
        )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "training": check_training(config, args.out / "train", 60 * args.train_minutes),
        "evaluation": check_evaluation(args.eval_scenario, args.chunk_size),
    }
    (args.out / "accelerator_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
