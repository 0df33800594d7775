"""Hinge finishing and last-layer refit of finished runs: what they change at their end.

Usage, from the repository root::

    python -m experiments.refit_runs LABEL=RUN_DIR [LABEL=RUN_DIR ...]
        [--tolerance 0.35] [--iterations 60] [--finish-rounds 0] [--finish-steps 5]
        [--finish-learning-rate 1e-4] [--finish-slack 0.1] [--finish-balance]
        [--finish-backtrack 0]
        [--kinks] [--kink-radius 0.3] [--kink-local-weight 1e4]
        [--out results/refit] [--json]

For every run directory it reloads the final projected network (``load_run``), optionally
revives the dead units of its last hidden layer as kinks beside its wrong inputs
(``insert_kinks``, ``--kinks``; the network's outputs do not change), optionally
finishes every matrix on the exact gradient of the receiver hinge (``finish_on_hard_set``,
``--finish-rounds N``, keeping the run's approximated matrices projected; with
``--finish-balance`` every target weighs the same in its hinge; with ``--finish-backtrack F``
a round whose steps raised the hinge is undone and the step multiplied by ``F``), refits the last
matrix over the run's dataset (``refit_last_layer``) and evaluates the networks
exhaustively. The refit is the computation ``TrainConfig(refit_iterations=...)`` performs
after a run's last epoch, so this measures both on runs already trained without training
them again. A run whose last matrix is approximated is refit-skipped (and reported as
skipped when no finishing is asked for).

Writes ``OUT/refit_runs.json`` (strict JSON): per run, the wrong inputs before, after the
finishing and after the refit, the wrongly decided symbols per position, the error
histogram at the end, the seconds of each; and ``OUT/refit_runs.png``, the wrong inputs of
every run at each of those points.
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

from optinc_jax.learning.balance import target_classes
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.finish import finish_on_hard_set
from optinc_jax.learning.kinks import insert_kinks
from optinc_jax.learning.refit import refit_last_layer
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import load_run

__all__ = ["main", "refit_run"]


def refit_run(
    run_dir: str | Path,
    *,
    tolerance: float,
    iterations: int,
    finish_rounds: int = 0,
    finish_steps: int = 5,
    finish_learning_rate: float = 1e-4,
    finish_slack: float = 0.1,
    finish_balance: bool = False,
    finish_backtrack: float = 0.0,
    kinks: bool = False,
    kink_radius: float = 0.3,
    kink_local_weight: float = 1e4,
) -> dict[str, Any]:
    """Kinks, finishing (both optional) and refit of one finished run; before and after.

    Raises:
        CheckpointError: if the directory holds no loadable run.
    """
    run = load_run(run_dir)
    last_free = len(run.scenario.layers) - 1 not in run.approx_layers
    # Without a finishing an approximated last matrix leaves nothing to do (kinks alone
    # change no output).
    if not last_free and finish_rounds == 0:
        return {"run_dir": str(run_dir), "status": "skipped", "reason": "last matrix approximated"}
    before = evaluate_exhaustive(run.apply_fn, run.params, run.dataset)
    record: dict[str, Any] = {
        "run_dir": str(run_dir),
        "status": "refit" if last_free else "finished",
        "scenario": run.scenario.name,
        "approx": list(run.approx_layers),
        "epochs": run.epoch,
        "wrong_before": before.total - before.correct,
        "accuracy_before": before.accuracy,
    }
    params = run.params
    if kinks:
        tic = time.perf_counter()
        insertion = insert_kinks(
            run.apply_fn,
            params,
            run.dataset,
            approx_layers=run.approx_layers,
            side=run.config.approx_side,
            radius=kink_radius,
            local_weight=kink_local_weight,
        )
        record["kink_seconds"] = time.perf_counter() - tic
        record["kinks"] = insertion.to_json()
        params = insertion.params
    if finish_rounds:
        tic = time.perf_counter()
        finish = finish_on_hard_set(
            run.apply_fn,
            params,
            run.dataset,
            approx_layers=run.approx_layers,
            rounds=finish_rounds,
            steps=finish_steps,
            learning_rate=finish_learning_rate,
            tolerance=tolerance,
            slack=finish_slack,
            side=run.config.approx_side,
            refine_steps=run.config.refine_steps,
            classes=target_classes(run.dataset) if finish_balance else None,
            backtrack=finish_backtrack,
        )
        record["finish_seconds"] = time.perf_counter() - tic
        record["finish"] = finish.to_json()
        record["wrong_after_finish"] = finish.wrong_after
        params = finish.params
    if last_free:
        tic = time.perf_counter()
        refit = refit_last_layer(
            run.apply_fn, params, run.dataset, tolerance=tolerance, iterations=iterations
        )
        record["refit_seconds"] = time.perf_counter() - tic
        record.update(refit.to_json())
        params = refit.params
    after = evaluate_exhaustive(run.apply_fn, params, run.dataset)
    record["wrong_after"] = after.total - after.correct
    record["accuracy_after"] = after.accuracy
    record["error_histogram_after"] = after.to_json()["error_histogram"]
    return record


def _figure(document: dict, path: Path) -> None:
    """Wrong inputs of every run before, after the finishing and after the refit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        label: record for label, record in document["runs"].items() if record["status"] != "skipped"
    }
    if not runs:
        return
    points = [("before", "wrong_before"), ("finished", "wrong_after_finish")]
    points.append(("finished and refit" if document["finish_rounds"] else "refit", "wrong_after"))
    finished = {label: r["finish"] for label, r in runs.items() if "finish" in r}
    fig, axes = plt.subplots(
        1, 2 if finished else 1, figsize=(11 if finished else 6, 3.8), squeeze=False
    )
    axis = axes[0, 0]
    width = 0.8 / len(points)
    for offset, (name, key) in enumerate(points):
        if not any(key in record for record in runs.values()):
            continue
        bars = axis.bar(
            [i + (offset - (len(points) - 1) / 2) * width for i in range(len(runs))],
            [record.get(key, 0) for record in runs.values()],
            width,
            label=name,
        )
        axis.bar_label(bars, fontsize=7)
    axis.set_xticks(range(len(runs)), list(runs), fontsize=8, rotation=15)
    highest = max(record["wrong_before"] for record in runs.values())
    axis.set(ylabel="wrong inputs (exhaustive)", yscale="symlog", ylim=(0, 8 * highest))
    axis.set_title(
        ("kinks, " if document.get("kinks") else "")
        + f"hinge finishing ({document['finish_rounds']} rounds) and last-layer refit "
        f"(tolerance {document['tolerance']:g})",
        fontsize=9,
    )
    axis.legend(fontsize=7, loc="upper left")
    if finished:
        rounds = axes[0, 1]
        for label, finish in finished.items():
            line = rounds.plot(finish["wrong_by_round"], lw=1, label=label)[0]
            rounds.plot(
                finish["best_round"], finish["wrong_after"], "o", color=line.get_color(), ms=4
            )
        rounds.set(
            xlabel="finishing round (0: the trained network)",
            ylabel="wrong inputs (exhaustive)",
            title="wrong inputs at every round (dot: the one kept)",
        )
        # symlog, not log: a finishing that reaches 100 % ends at 0 wrong inputs.
        rounds.set_yscale("symlog", linthresh=1)
        rounds.set_ylim(bottom=0)
        rounds.title.set_fontsize(9)
        rounds.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--tolerance", type=float, default=0.35)
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--finish-rounds", type=int, default=0)
    parser.add_argument("--finish-steps", type=int, default=5)
    parser.add_argument("--finish-learning-rate", type=float, default=1e-4)
    parser.add_argument("--finish-slack", type=float, default=0.1)
    parser.add_argument(
        "--finish-balance", action="store_true", help="weigh every target equally in the hinge"
    )
    parser.add_argument(
        "--finish-backtrack",
        type=float,
        default=0.0,
        help="undo a round that raised the hinge, the step times this factor (0: never)",
    )
    parser.add_argument(
        "--kinks",
        action="store_true",
        help="revive the last hidden layer's dead units as kinks first (insert_kinks)",
    )
    parser.add_argument("--kink-radius", type=float, default=0.3)
    parser.add_argument("--kink-local-weight", type=float, default=1e4)
    parser.add_argument("--out", default="results/refit")
    parser.add_argument("--json", action="store_true", help="print the result document")
    args = parser.parse_args(argv)
    labelled = []
    for text in args.runs:
        label, sep, run_dir = text.partition("=")
        if not sep or not label or not run_dir:
            parser.error(f"a run must be given as LABEL=RUN_DIR, got {text!r}")
        labelled.append((label, run_dir))
    document = {
        "tolerance": args.tolerance,
        "iterations": args.iterations,
        "finish_rounds": args.finish_rounds,
        "finish_steps": args.finish_steps,
        "finish_learning_rate": args.finish_learning_rate,
        "finish_slack": args.finish_slack,
        "finish_balance": args.finish_balance,
        "finish_backtrack": args.finish_backtrack,
        "kinks": args.kinks,
        "kink_radius": args.kink_radius,
        "kink_local_weight": args.kink_local_weight,
        "runs": {},
    }
    out = Path(args.out)
    for label, run_dir in labelled:
        try:
            record = refit_run(
                run_dir,
                tolerance=args.tolerance,
                iterations=args.iterations,
                finish_rounds=args.finish_rounds,
                finish_steps=args.finish_steps,
                finish_learning_rate=args.finish_learning_rate,
                finish_slack=args.finish_slack,
                finish_balance=args.finish_balance,
                finish_backtrack=args.finish_backtrack,
                kinks=args.kinks,
                kink_radius=args.kink_radius,
                kink_local_weight=args.kink_local_weight,
            )
        except (OSError, ValueError) as error:
            print(f"error: {label}: {error}", file=sys.stderr)
            sys.exit(1)
        document["runs"][label] = record
        if record["status"] != "skipped":
            finished = record.get("wrong_after_finish", "-")
            print(
                f"{label}: {record['wrong_before']} -> {finished} (finished) -> "
                f"{record['wrong_after']} wrong",
                file=sys.stderr,
            )
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out / "refit_runs.json", document)
    _figure(document, out / "refit_runs.png")
    if args.json:
        print(json.dumps(document, allow_nan=False))


if __name__ == "__main__":
    main()
