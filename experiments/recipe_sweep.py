"""Recipe sweep: one scenario's preset with named changes, each trained in full, side by side.

Usage, from the repository root::

    python -m experiments.recipe_sweep --scenario 8b8s --out runs/sweep
        --variant approx-w05='{"symbol_weight_base": 0.5}'
        --variant none='{"approx": "none"}' [--seeds 0,1,2] [--parallel 2] [--minutes 3.5]
        [--json]

Each variant is ``TrainConfig.for_scenario(scenario, **changes)`` (the JSON object holds
``TrainConfig`` fields) trained from scratch in ``OUT/<name>/``, stopped at its last
epoch, at its first projected 100 % (the preset's rule) or after ``--minutes`` of wall
time, whichever comes first. ``--seeds 0,1,2`` trains every variant once per seed (as
``<name>-s<seed>``) and the summary groups the runs of each variant (``by_changes``: wrong
inputs, median, how many reached 100 % and when). With ``--parallel P`` (default 1) up to
P variants train at once, each in its own process: on one GPU an 8b8s epoch is
launch-bound, so two runs share it at little cost each (measured on an H200: 0.35-0.48 s
per epoch with two at once, 0.44 s alone). More saturate it: on an H100, 0.78-0.79 s per
epoch each with three at once, 2.0-2.2 s each with eight (after 160 s of compiling side
by side), about 3.8 epochs per second in all either way. On a 2-core CPU keep 1.

Writes ``OUT/<name>.json`` for each variant (the changes, the stop reason, the wrong
inputs at the last evaluation, the final exhaustive accuracy and error histogram if it
ended, the wall seconds at the end of every epoch and the projected accuracy evaluated
there) and ``OUT/recipe_sweep.json`` and ``OUT/recipe_sweep.png`` (wrong inputs over the
epochs, one line per variant). A variant that diverges is recorded as such, without a
number, and the others go on. One seed per variant without ``--seeds``: a comparison of
two variants is then one run against one run.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.wall_clock import EpochClock, TimeUp
from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import TrainingDiverged, train_onn

__all__ = ["group_runs", "main", "parse_variant", "run", "train_variant", "with_seeds"]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """Splits ``NAME=JSON`` into the variant's name and its ``TrainConfig`` changes.

    Raises:
        ValueError: on a missing ``=``, a name that is not a plain file name, or JSON that
            is not an object.
    """
    name, sep, changes = text.partition("=")
    if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"a variant is NAME=JSON with NAME in letters, digits, - and _, got {text!r}"
        )
    try:
        parsed = json.loads(changes)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"variant {name!r}: changes are not JSON ({error.msg}): {changes!r}"
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"variant {name!r}: changes must be a JSON object, got {changes!r}")
    return name, parsed


def with_seeds(
    variants: dict[str, dict[str, Any]], seeds: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Every variant once per seed, named ``<name>-s<seed>``, its changes given ``seed``.

    Raises:
        ValueError: if a variant's changes set ``seed`` themselves.
    """
    expanded = {}
    for name, changes in variants.items():
        if "seed" in changes:
            raise ValueError(f"variant {name!r} sets its own seed; drop it or --seeds")
        for seed in seeds:
            expanded[f"{name}-s{seed}"] = {**changes, "seed": seed}
    return expanded


def train_variant(
    scenario: str, name: str, changes: dict[str, Any], out: Path, limit_s: float
) -> dict[str, Any]:
    """Trains one variant and writes ``out/<name>.json``; returns its report.

    Args:
        scenario: a registered scenario name.
        name: the variant's name (its run directory and JSON file).
        changes: ``TrainConfig`` fields changed from the scenario's preset.
        out: the sweep's directory.
        limit_s: wall seconds after which the run stops at the end of an epoch.
    """
    config = TrainConfig.for_scenario(scenario, **changes)
    resolved = config.resolved_scenario()
    total = make_dataset_spec(resolved.bits, resolved.servers, resolved.inputs).size
    report: dict[str, Any] = {"name": name, "scenario": scenario, "changes": changes}
    clock = EpochClock(limit_s, last_epoch=config.epochs)
    try:
        record = train_onn(config, out / name, progress=False, on_epoch_end=clock).record
    except TimeUp:
        report["stopped_by"] = f"time limit {limit_s:.0f} s"
    except TrainingDiverged as error:  # recorded without a number; the other variants go on
        report["stopped_by"] = f"diverged at epoch {error.epoch}"
    else:
        report["stopped_by"] = "100 %" if record["correct"] == record["total"] else "last epoch"
        for key in ("epochs", "accuracy", "correct", "error_histogram"):
            report[key] = record[key]
        report["first_full_accuracy"] = record.get("first_full_accuracy")
    report["total"] = total
    history = clock.history
    accuracies = history.get("accuracy", [])
    # at the last evaluation (the final exhaustive one when the run ended)
    if "correct" in report:
        report["wrong"] = total - report["correct"]
    elif accuracies and not report["stopped_by"].startswith("diverged"):
        report["wrong"] = round((1 - accuracies[-1]) * total)
    else:
        report["wrong"] = None
    report["epoch_end_seconds"] = clock.epoch_ends
    report["eval_epoch"] = history.get("eval_epoch", [])
    report["epoch_accuracy"] = history.get("accuracy", [])
    report["min_margin"] = history.get("min_margin", [])
    report["config"] = config.to_json()
    write_json_atomically(out / f"{name}.json", report)
    return report


def run(
    scenario: str,
    variants: dict[str, dict[str, Any]],
    out: str | Path,
    *,
    parallel: int = 1,
    minutes: float = float("inf"),
) -> dict[str, Any]:
    """Trains every variant (``parallel`` at a time) and writes the sweep's JSON and figure.

    Returns:
        ``{"scenario", "parallel", "variants": [report, ...]}`` (each report as in
        :func:`train_variant`), also written to ``out/recipe_sweep.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for changes in variants.values():  # every config is checked before any trains
        TrainConfig.for_scenario(scenario, **changes)
    limit_s = 60 * minutes
    if parallel == 1:
        reports = [
            train_variant(scenario, name, changes, out, limit_s)
            for name, changes in variants.items()
        ]
    else:
        # Fresh interpreters: JAX must not be forked. Each process takes a share of an
        # accelerator's memory instead of XLA's default 75 %.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / parallel:.2f}")
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context) as pool:
            futures = [
                pool.submit(train_variant, scenario, name, changes, out, limit_s)
                for name, changes in variants.items()
            ]
            reports = [future.result() for future in futures]
    summary = {"scenario": scenario, "parallel": parallel, "variants": reports}
    summary["by_changes"] = group_runs(reports)
    write_json_atomically(out / "recipe_sweep.json", summary)
    _plot(summary, out / "recipe_sweep.png")
    return summary


def _variant_key(changes: dict[str, Any]) -> str:
    """The changes of a run without its seed, as canonical JSON (one key per variant)."""
    return json.dumps({k: v for k, v in changes.items() if k != "seed"}, sort_keys=True)


def group_runs(reports: list[dict]) -> list[dict]:
    """Runs grouped by their changes without the seed, in order of first appearance.

    Args:
        reports: run reports as :func:`train_variant` returns them (``name``, ``changes``,
            ``wrong``, ``first_full_accuracy`` where the run ended).

    Returns:
        One row per variant: ``changes`` (without the seed), ``runs`` (names), ``wrong``
        and ``median_wrong`` (``None`` if a run has no count), ``reached_100`` (how many
        runs reached 100 %), ``first_full_epochs`` and ``first_full_seconds`` of those, and
        ``median_first_full_seconds`` (``None`` unless every run reached it).
    """
    groups: dict[str, list[dict]] = {}
    for report in reports:
        groups.setdefault(_variant_key(report["changes"]), []).append(report)
    rows = []
    for key, group in groups.items():
        wrong = [r["wrong"] for r in group]
        full = [r["first_full_accuracy"] for r in group if r.get("first_full_accuracy")]
        rows.append(
            {
                "changes": json.loads(key),
                "runs": [r["name"] for r in group],
                "wrong": wrong,
                "median_wrong": statistics.median(wrong) if None not in wrong else None,
                "reached_100": len(full),
                "first_full_epochs": [f["epoch"] for f in full],
                "first_full_seconds": [f["train_seconds"] for f in full],
                "median_first_full_seconds": (
                    statistics.median(f["train_seconds"] for f in full)
                    if len(full) == len(group)
                    else None
                ),
            }
        )
    return rows


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(8, 4.5))
    # one colour per variant, one line style per seed (run) within it
    groups = {_variant_key(row["changes"]): row for row in summary["by_changes"]}
    colours = {key: f"C{index % 10}" for index, key in enumerate(groups)}
    styles = ("-", "--", ":", "-.")
    for report in summary["variants"]:
        if not report["epoch_accuracy"]:
            continue
        key = _variant_key(report["changes"])
        style = styles[groups[key]["runs"].index(report["name"]) % len(styles)]
        total = report["total"]
        wrong = [max(round((1 - a) * total), 0.5) for a in report["epoch_accuracy"]]
        wrong_text = "-" if report["wrong"] is None else f"{report['wrong']:,}"
        label = f"{report['name']}: {wrong_text} wrong ({report['stopped_by']})"
        axis.plot(report["eval_epoch"], wrong, style, color=colours[key], label=label)
    axis.set_yscale("log")
    axis.set(
        xlabel="epoch",
        ylabel="wrong inputs (projected network; 0.5 = none)",
        title=f"{summary['scenario']}: recipe variants",
    )
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.recipe_sweep --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recipe_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default="8b8s")
    parser.add_argument("--variant", action="append", required=True, help="NAME=JSON")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe_sweep"))
    parser.add_argument("--seeds", help="comma-separated seeds: every variant once per seed")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=float("inf"))
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        variants = dict(parse_variant(text) for text in args.variant)
        if len(variants) != len(args.variant):
            raise ValueError("two variants share a name")
        if args.seeds is not None:
            try:
                seeds = [int(seed) for seed in args.seeds.split(",")]
            except ValueError:
                raise ValueError(f"--seeds must be integers, got {args.seeds!r}") from None
            variants = with_seeds(variants, seeds)
        if args.parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
        if not args.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {args.minutes}")
        summary = run(
            args.scenario, variants, args.out, parallel=args.parallel, minutes=args.minutes
        )
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        for report in summary["variants"]:
            print(f"{report['name']}: {report['stopped_by']}, {report['wrong']} wrong")
        for row in summary["by_changes"]:
            print(
                f"{json.dumps(row['changes'])}: wrong {row['wrong']}, 100 % in "
                f"{row['reached_100']} of {len(row['runs'])}, epochs {row['first_full_epochs']}"
            )


if __name__ == "__main__":
    main()
