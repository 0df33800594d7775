"""Last-layer refit of finished runs: what the refit would have changed at their end.

Usage, from the repository root::

    python -m experiments.refit_runs LABEL=RUN_DIR [LABEL=RUN_DIR ...]
        [--tolerance 0.35] [--iterations 60] [--out results/refit] [--json]

For every run directory it reloads the final projected network (``load_run``), refits its
last matrix over the run's dataset (``refit_last_layer``) and evaluates both networks
exhaustively. That is the computation ``TrainConfig(refit_iterations=...)`` performs after
a run's last epoch, so it measures the refit on runs already trained without training
them again. A run whose last matrix is approximated is reported as skipped.

Writes ``OUT/refit_runs.json`` (strict JSON): per run, the wrong inputs before and after,
the wrongly decided symbols per position, the error histogram after, the refit's seconds.
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

from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.refit import refit_last_layer
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import load_run

__all__ = ["main", "refit_run"]


def refit_run(run_dir: str | Path, *, tolerance: float, iterations: int) -> dict[str, Any]:
    """Refits one finished run's last matrix; the record of before and after.

    Raises:
        CheckpointError: if the directory holds no loadable run.
    """
    run = load_run(run_dir)
    last = len(run.scenario.layers) - 1
    if last in run.approx_layers:
        return {"run_dir": str(run_dir), "status": "skipped", "reason": "last matrix approximated"}
    before = evaluate_exhaustive(run.apply_fn, run.params, run.dataset)
    tic = time.perf_counter()
    refit = refit_last_layer(
        run.apply_fn, run.params, run.dataset, tolerance=tolerance, iterations=iterations
    )
    seconds = time.perf_counter() - tic
    after = evaluate_exhaustive(run.apply_fn, refit.params, run.dataset)
    return {
        "run_dir": str(run_dir),
        "status": "refit",
        "scenario": run.scenario.name,
        "approx": list(run.approx_layers),
        "epochs": run.epoch,
        "wrong_before": before.total - before.correct,
        "wrong_after": after.total - after.correct,
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "error_histogram_after": after.to_json()["error_histogram"],
        "refit_seconds": seconds,
        **refit.to_json(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--tolerance", type=float, default=0.35)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--out", default="results/refit")
    parser.add_argument("--json", action="store_true", help="print the result document")
    args = parser.parse_args(argv)
    labelled = []
    for text in args.runs:
        label, sep, run_dir = text.partition("=")
        if not sep or not label or not run_dir:
            parser.error(f"a run must be given as LABEL=RUN_DIR, got {text!r}")
        labelled.append((label, run_dir))
    document = {"tolerance": args.tolerance, "iterations": args.iterations, "runs": {}}
    for label, run_dir in labelled:
        try:
            record = refit_run(run_dir, tolerance=args.tolerance, iterations=args.iterations)
        except (OSError, ValueError) as error:
            print(f"error: {label}: {error}", file=sys.stderr)
            sys.exit(1)
        document["runs"][label] = record
        if record["status"] == "refit":
            print(
                f"{label}: {record['wrong_before']} -> {record['wrong_after']} wrong "
                f"(symbols {record['wrong_symbols_before']} -> {record['wrong_symbols_after']}, "
                f"{record['refit_seconds']:.0f} s)",
                file=sys.stderr,
            )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out / "refit_runs.json", document)
    if args.json:
        print(json.dumps(document, allow_nan=False))


if __name__ == "__main__":
    main()
