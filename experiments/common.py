"""Shared logic of the Table I and Table II experiments (``table1.py``, ``table2.py``).

A table is a list of :class:`PaperRow` (a scenario, the approximated weight matrices and
the paper's figures for them). :func:`run_table` trains every selected row with
:func:`optinc_jax.learning.train.run` under ``workdir/<row name>/``, then writes
``workdir/<table>.json`` (a list of row dicts, ours beside the paper's) and
``workdir/<table>.md`` and the figure ``workdir/<table>.png``.

Budgets (the ``budget`` field of every JSON row, also listed under the markdown table):

* ``quick`` (a 2-core CPU; not timed end to end): a dataset of at most
  :data:`QUICK_FULL_DATASET` samples (8b4s) trains with the default
  :class:`~optinc_jax.learning.train.TrainConfig` in full; larger ones train
  :data:`QUICK_EPOCHS` epochs of :data:`QUICK_STEPS` steps with the stage switch at 60 %
  of the epochs (as in the default config) and one exhaustive evaluation at the end.
* ``full`` (accelerators): the default config; datasets larger than
  :data:`FULL_STEPS` minibatches use epochs of :data:`FULL_STEPS` steps (sampled with
  replacement) and are evaluated every :data:`FULL_EVAL_EVERY` epochs.

Rows that stop short of 100 % are reported as measured. A row whose ``result.json``
already holds the same config is reused; an interrupted row resumes from its checkpoint.
"""

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.train import TrainConfig, resolve_scenario, run
from optinc_jax.photonics.area import PAPER_AREA_ROWS, format_approx
from optinc_jax.scenarios import get_scenario

QUICK_FULL_DATASET = 1 << 16
QUICK_EPOCHS = 20
QUICK_STEPS = 100
FULL_STEPS = 2000
FULL_EVAL_EVERY = 5
SWITCH_FRACTION = 0.6


class PaperRow(NamedTuple):
    """One row of a paper table.

    Attributes:
        name: row key for ``--rows``, e.g. ``"8b4s-approx"``.
        scenario: registered scenario name.
        approx: ``TrainConfig.approx`` value (``"none"``, ``"4-6"``, ``None`` for the
            scenario's own selection).
        paper_area_percent: the paper's area ratio in percent.
        paper_accuracy_percent: the paper's ONN accuracy in percent.
        paper_errors: the paper's error values and shares, as printed ("" when unknown).
    """

    name: str
    scenario: str
    approx: str | None
    paper_area_percent: float
    paper_accuracy_percent: float
    paper_errors: str = ""


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """What a table run does.

    Attributes:
        rows: row names to run, ``None`` for all.
        quick: the 2-core CPU budget instead of the accelerator one (module docstring).
        epochs: overrides every row's epoch count (smoke runs).
        steps_per_epoch: overrides every row's steps per epoch (smoke runs).
        scenario: runs every row on this registered scenario instead of the table's
            (smoke tests on a tiny network; the paper columns then do not apply).
        progress: show progress bars.
    """

    rows: tuple[str, ...] | None = None
    quick: bool = False
    epochs: int | None = None
    steps_per_epoch: int | None = None
    scenario: str | None = None
    progress: bool = True


def paper_area_percent(table: str, scenario_name: str, approx: Sequence[int]) -> float:
    """The paper's area ratio for a row (100 without approximation).

    Raises:
        ValueError: if the paper has no such row.
    """
    if not approx:
        return 100.0
    scenario = get_scenario(scenario_name)
    for row in PAPER_AREA_ROWS:
        if (row.table, row.layers, row.approx) == (table, scenario.layers, tuple(approx)):
            return row.area_ratio_percent
    raise ValueError(f"the paper's Table {table} has no {scenario_name} row with approx {approx}")


def select_rows(rows: Sequence[PaperRow], names: Sequence[str] | None) -> list[PaperRow]:
    """The rows named in ``names`` (all when ``None``), in table order.

    Raises:
        ValueError: on an unknown name; the message lists the known ones.
    """
    if names is None:
        return list(rows)
    known = [row.name for row in rows]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known rows: {', '.join(known)}")
    return [row for row in rows if row.name in names]


def row_config(row: PaperRow, config: ExperimentConfig) -> tuple[TrainConfig, str]:
    """The training config of one row and a sentence describing its budget."""
    scenario_name = config.scenario or row.scenario
    train = TrainConfig(scenario=scenario_name, approx=row.approx)
    scenario, _ = resolve_scenario(train)
    size = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs).size
    if config.quick and size > QUICK_FULL_DATASET:
        train = train.replace(
            epochs=QUICK_EPOCHS,
            steps_per_epoch=QUICK_STEPS,
            switch_epoch=round(SWITCH_FRACTION * QUICK_EPOCHS),
            eval_every=QUICK_EPOCHS,
        )
        budget = (
            f"quick (CPU): {QUICK_EPOCHS} epochs x {QUICK_STEPS} steps of "
            f"{train.batch_size}, stage 2 from epoch {train.switch_epoch}, "
            "one exhaustive evaluation at the end"
        )
    elif not config.quick and size > FULL_STEPS * train.batch_size:
        train = train.replace(steps_per_epoch=FULL_STEPS, eval_every=FULL_EVAL_EVERY)
        budget = (
            f"full: up to {train.epochs} epochs x {FULL_STEPS} steps of {train.batch_size}, "
            f"evaluated every {FULL_EVAL_EVERY} epochs, stop at 100 %"
        )
    else:
        budget = (
            f"{'quick' if config.quick else 'full'}: default config (up to {train.epochs} "
            "epochs of one pass, evaluated every epoch, stop at 100 %)"
        )
    if config.epochs is not None or config.steps_per_epoch is not None:
        epochs = config.epochs or train.epochs
        train = train.replace(
            epochs=epochs,
            steps_per_epoch=config.steps_per_epoch or train.steps_per_epoch,
            switch_epoch=min(train.switch_epoch, round(SWITCH_FRACTION * epochs)),
            eval_every=min(train.eval_every, epochs),
        )
        budget = (
            f"smoke: {train.epochs} epochs x {train.steps_per_epoch or 'one pass of'} steps "
            "(overridden on the command line)"
        )
    return train, budget


def data_mesh() -> Mesh | None:
    """A 1-D ``"data"`` mesh over all accelerators; ``None`` on one device or on CPU.

    Forced host devices (``--xla_force_host_platform_device_count``) share the same cores,
    so CPU runs stay on one device.
    """
    devices = jax.devices()
    if len(devices) == 1 or jax.default_backend() == "cpu":
        return None
    return Mesh(np.array(devices), ("data",))


def error_shares(histogram: dict[str, int]) -> dict[str, float]:
    """``{error value: share of the wrong samples}`` (shares sum to 1; empty if none)."""
    wrong = sum(histogram.values())
    return {value: count / wrong for value, count in histogram.items()}


def _run_row(row: PaperRow, stem: str, config: ExperimentConfig, workdir: Path) -> dict:
    train, budget = row_config(row, config)
    run_dir = workdir / row.name
    result_path = run_dir / "result.json"
    record = json.loads(result_path.read_text()) if result_path.exists() else None
    if record is None or record["config"] != dataclasses.asdict(train):
        if config.progress:
            print(f"[{stem}] {row.name}: {budget}", flush=True)
        record = run(train, run_dir, resume=True, progress=config.progress, mesh=data_mesh()).record
    elif config.progress:
        print(f"[{stem}] {row.name}: reusing {result_path}", flush=True)
    return {
        "name": row.name,
        "scenario": record["scenario"],
        "bits": record["bits"],
        "servers": record["servers"],
        "layers": record["layers"],
        "approx": record["approx"],
        "area_ratio": record["area_ratio"],
        "area_ratio_percent": 100 * record["area_ratio"],
        "paper_area_ratio_percent": row.paper_area_percent,
        "accuracy": record["accuracy"],
        "accuracy_percent": 100 * record["accuracy"],
        "paper_accuracy_percent": row.paper_accuracy_percent,
        "correct": record["correct"],
        "total": record["total"],
        "reached_full_accuracy": record["correct"] == record["total"],
        "error_histogram": record["error_histogram"],
        "error_shares": error_shares(record["error_histogram"]),
        "paper_errors": row.paper_errors,
        "epochs": record["epochs"],
        "steps_per_epoch": record["steps_per_epoch"],
        "train_seconds": record["train_seconds"],
        "device": record["device"],
        "devices": record["devices"],
        "budget": budget,
        "workdir": str(run_dir),
        "config": record["config"],
    }


def _format_errors(shares: dict[str, float], limit: int = 4) -> str:
    ranked = sorted(shares.items(), key=lambda item: -item[1])
    text = ", ".join(f"{int(value):+d} ({100 * share:.1f} %)" for value, share in ranked[:limit])
    return text + (", ..." if len(ranked) > limit else "") or "-"


def markdown_table(title: str, rows: Sequence[dict]) -> str:
    """The rows as a markdown table, ours beside the paper's, with each row's budget."""
    lines = [
        f"# {title}",
        "",
        "Ours: projected (hardware-mapped) network, exhaustive evaluation. Area = MZIs "
        "relative to the unapproximated ONN. Errors: value of `t_hat - t` (share of the "
        "wrong samples).",
        "",
        "| row | bits | N | ONN structure | approx | area | paper area | accuracy "
        "| paper accuracy | errors | paper errors | epochs | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['bits']} | {row['servers']} | {row['layers']} "
            f"| {format_approx(row['approx']) if row['approx'] else 'none'} "
            f"| {row['area_ratio_percent']:.1f} % | {row['paper_area_ratio_percent']:.1f} % "
            f"| {row['accuracy_percent']:.5f} % | {row['paper_accuracy_percent']:.5f} % "
            f"| {_format_errors(row['error_shares'])} | {row['paper_errors'] or '-'} "
            f"| {row['epochs']} | {row['train_seconds']:.0f} |"
        )
    lines += ["", "Budgets and devices:", ""]
    lines += [
        f"- {row['name']}: {row['budget']}; {row['devices']} x {row['device']}" for row in rows
    ]
    return "\n".join(lines) + "\n"


def run_table(
    stem: str, title: str, rows: Sequence[PaperRow], config: ExperimentConfig, workdir: str | Path
) -> list[dict]:
    """Trains the selected rows and writes ``<stem>.json`` and ``<stem>.md``.

    Args:
        stem: output file name stem, e.g. ``"table1"``.
        title: markdown title, e.g. ``"Table I"``.
        rows: the table's rows.
        config: selection and budget.
        workdir: output directory; every row's run lies in ``workdir/<row name>/``.

    Returns:
        The row dicts written to the JSON file.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results = [_run_row(row, stem, config, workdir) for row in select_rows(rows, config.rows)]
    (workdir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (workdir / f"{stem}.md").write_text(markdown_table(title, results))
    plot_table(title, results, workdir / f"{stem}.png")
    return results


def plot_table(title: str, rows: Sequence[dict], path: Path) -> None:
    """Bar charts of area ratio and exhaustive error rate per row, ours beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rows]
    positions = np.arange(len(rows))
    width = 0.38
    fig, (ax_area, ax_error) = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(rows) + 4), 4.2))
    ax_area.bar(positions - width / 2, [r["area_ratio_percent"] for r in rows], width, label="ours")
    ax_area.bar(
        positions + width / 2, [r["paper_area_ratio_percent"] for r in rows], width, label="paper"
    )
    ax_area.set(ylabel="area ratio (% of MZIs)", title="area")
    floor = 1e-7  # error rates below this are drawn at the floor (exact networks)
    ax_error.bar(
        positions - width / 2,
        [max(1 - r["accuracy"], floor) for r in rows],
        width,
        label="ours (measured)",
    )
    ax_error.bar(
        positions + width / 2,
        [max(1 - r["paper_accuracy_percent"] / 100, floor) for r in rows],
        width,
        label="paper",
    )
    ax_error.set_yscale("log")
    ax_error.set(ylabel=f"1 - exhaustive accuracy (floor {floor:g} = exact)", title="errors")
    for axis in (ax_area, ax_error):
        axis.set_xticks(positions, names, rotation=30, ha="right")
        axis.legend()
    fig.suptitle(f"{title}: ours (projected ONN) vs the paper; budgets in the .md file")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_config(description: str, rows: Sequence[PaperRow], argv=None) -> tuple:
    """Parses a table script's command line into ``(ExperimentConfig, out_dir)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="output directory")
    parser.add_argument("--quick", action="store_true", help="the 2-core CPU budget")
    parser.add_argument(
        "--rows", help=f"comma-separated rows (default all): {','.join(r.name for r in rows)}"
    )
    parser.add_argument("--epochs", type=int, help="override every row's epochs (smoke run)")
    parser.add_argument("--steps-per-epoch", type=int, help="override steps per epoch")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = ExperimentConfig(
        rows=tuple(args.rows.split(",")) if args.rows else None,
        quick=args.quick,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        progress=not args.no_progress,
    )
    select_rows(rows, config.rows)
    return config, args.out


def table_main(stem: str, title: str, rows: Sequence[PaperRow], description: str, argv=None):
    """A table script's ``main``: parse the command line, run, print the markdown."""
    config, out = parse_config(description, rows, argv)
    run_table(stem, title, rows, config, out)
    print((Path(out) / f"{stem}.md").read_text())
