"""What the Table I and Table II experiments share: rows, budgets, runs, markdown, figure.

A table is a list of :class:`PaperRow` (a scenario, the approximated weight matrices and
the paper's figures for them, all read from :mod:`optinc_jax.paper`). :func:`run_table`
trains every selected row with :func:`optinc_jax.learning.trainer.train_onn` under
``workdir/<row name>/`` on the budget of a :class:`~experiments.configs.TableConfig`
(presets in :mod:`experiments.configs`), then writes ``workdir/<table>.json`` (a list of
row dicts, ours beside the paper's), ``workdir/<table>.md`` and the figure
``workdir/<table>.png``.

Every row is trained with ``resume=True``: an interrupted row resumes from its last
checkpoint, and a finished row (same config) returns its stored result without training
again, so an interrupted table resumes row by row. Rows that stop short of 100 % are
reported as measured.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.configs import (
    SWITCH_FRACTION,
    TableConfig,
    add_preset_arguments,
    preset_name,
    table_preset,
)
from experiments.devices import data_mesh
from optinc_jax.encoding.dataset import make_dataset_spec
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import train_onn
from optinc_jax.paper import PaperError
from optinc_jax.photonics.area import format_approx
from optinc_jax.scenarios import get_scenario

__all__ = [
    "PaperRow",
    "error_shares",
    "format_paper_errors",
    "markdown_table",
    "paper_scenario_name",
    "parse_table_args",
    "plot_table",
    "row_config",
    "run_table",
    "select_rows",
    "table_main",
]


class PaperRow(NamedTuple):
    """One row of a paper table, with the paper's figures for it.

    Attributes:
        name: row key for ``--rows``, e.g. ``"8b4s-approx"``.
        scenario: registered scenario name.
        approx: ``TrainConfig.approx`` value (``"none"``, ``"4-6"``, ``None`` for the
            scenario's own selection).
        paper_area_percent: the paper's area ratio in percent.
        paper_accuracy_percent: the paper's ONN accuracy in percent.
        paper_errors: the paper's error values with their shares (empty: none reported).
    """

    name: str
    scenario: str
    approx: str | None
    paper_area_percent: float
    paper_accuracy_percent: float
    paper_errors: tuple[PaperError, ...] = ()


def paper_scenario_name(bits: int, servers: int) -> str:
    """The registered scenario of the paper's ``bits``-bit, ``servers``-server row.

    Raises:
        ValueError: if no such scenario is registered.

    Examples:
        >>> paper_scenario_name(16, 4)
        '16b4s'
    """
    return get_scenario(f"{bits}b{servers}s").name


def format_paper_errors(errors: Sequence[PaperError]) -> str:
    """The paper's error column in full: every value with its share, ``?`` for lost values.

    Examples:
        >>> format_paper_errors((PaperError(None, 79.5), PaperError(12, 3.5)))
        '? (79.5 %), 12 (3.5 %)'
        >>> format_paper_errors(())
        '-'
    """
    text = ", ".join(
        f"{'?' if error.value is None else error.value} ({error.share_percent:g} %)"
        for error in errors
    )
    return text or "-"


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


def row_config(row: PaperRow, config: TableConfig) -> tuple[TrainConfig, str]:
    """The training config of one row on a budget, and a sentence describing the budget."""
    train = preset = TrainConfig.for_scenario(config.scenario or row.scenario, approx=row.approx)
    scenario = train.resolved_scenario()
    size = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs).size
    if size > config.full_pass_samples:
        epochs = config.capped_epochs or train.epochs
        train = train.replace(
            epochs=epochs,
            steps_per_epoch=config.capped_steps_per_epoch,
            switch_epoch=(
                train.switch_epoch
                if config.capped_epochs is None
                else round(SWITCH_FRACTION * epochs)
            ),
            eval_every=config.capped_eval_every or epochs,
            # a focused run rebuilds its hard set from a checkpoint: checkpoint on evaluations
            checkpoint_every=config.capped_eval_every or epochs,
        )
        evaluations = (
            "one exhaustive evaluation at the end"
            if train.eval_every >= epochs
            else f"evaluated every {train.eval_every} epochs"
        )
        budget = (
            f"{config.preset}: up to {epochs} epochs x {train.steps_per_epoch} steps of "
            f"{train.batch_size}, stage 2 from epoch {train.switch_epoch}, {evaluations}, "
            "stop at 100 %"
        )
    else:
        stage1 = train.stage1_eval_every or train.eval_every
        after = "every epoch" if train.eval_every == 1 else f"every {train.eval_every} epochs"
        evaluations = (
            "evaluated every epoch"
            if stage1 == train.eval_every == 1
            else f"evaluated every {stage1} epochs in stage 1, then {after}"
        )
        budget = (
            f"{config.preset}: the scenario's preset (up to {train.epochs} epochs of one "
            f"pass, focus {train.focus_fraction:g}, {evaluations}, stop at 100 %"
            + (f" with a margin of {train.stop_margin:g} symbol)" if train.stop_margin else ")")
        )
    if config.epochs is not None or config.steps_per_epoch is not None:
        epochs = config.epochs or train.epochs
        train = train.replace(
            epochs=epochs,
            steps_per_epoch=config.steps_per_epoch or train.steps_per_epoch,
            switch_epoch=min(train.switch_epoch, round(SWITCH_FRACTION * epochs)),
            eval_every=min(train.eval_every, epochs),
            checkpoint_every=min(train.eval_every, epochs),
        )
        budget = (
            f"{config.preset}, overridden: {train.epochs} epochs x "
            f"{train.steps_per_epoch or 'one pass of'} steps"
        )
    if train.epochs < preset.epochs and train.finish_rounds:
        # The finishing scores the grid and steps over its hard inputs every round; after a
        # cut schedule most of the grid is hard, and its rounds would cost far more than the
        # budget's training (an 8b8s row: tens of minutes on the 2-core CPU).
        train = train.replace(finish_rounds=0)
        budget += ", without the preset's hinge finishing"
    if train.pad_levels:
        budget += f", trained on the grid padded by {train.pad_levels} levels per side"
    return train, budget


def error_shares(histogram: dict[str, int]) -> dict[str, float]:
    """``{error value: share of the wrong samples}`` (shares sum to 1; empty if none)."""
    wrong = sum(histogram.values())
    return {value: count / wrong for value, count in histogram.items()}


def _run_row(row: PaperRow, stem: str, config: TableConfig, workdir: Path) -> dict:
    train, budget = row_config(row, config)
    run_dir = workdir / row.name
    if config.progress:
        print(f"[{stem}] {row.name}: {budget}", flush=True)
    record = train_onn(
        train, run_dir, resume=True, progress=config.progress, mesh=data_mesh()
    ).record
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
        "paper_errors": format_paper_errors(row.paper_errors),
        "paper_error_shares": [error._asdict() for error in row.paper_errors],
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
        "wrong samples); ours lists the four most frequent, the paper's every one it "
        "reports (`?`: a value lost from the paper's text, only its share survived).",
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
            f"| {_format_errors(row['error_shares'])} | {row['paper_errors']} "
            f"| {row['epochs']} | {row['train_seconds']:.0f} |"
        )
    lines += ["", "Budgets and devices:", ""]
    lines += [
        f"- {row['name']}: {row['budget']}; {row['devices']} x {row['device']}" for row in rows
    ]
    return "\n".join(lines) + "\n"


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


def run_table(
    stem: str, title: str, rows: Sequence[PaperRow], config: TableConfig, workdir: str | Path
) -> list[dict]:
    """Trains the selected rows and writes ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``.

    Args:
        stem: output file name stem, e.g. ``"table1"``.
        title: markdown title, e.g. ``"Table I"``.
        rows: the table's rows.
        config: selection and budget.
        workdir: output directory; every row's run lies in ``workdir/<row name>/``.

    Returns:
        The row dicts written to the JSON file.

    Raises:
        ValueError: on an unknown row name in ``config.rows``.
    """
    workdir = Path(workdir)
    selected = select_rows(rows, config.rows)
    workdir.mkdir(parents=True, exist_ok=True)
    results = [_run_row(row, stem, config, workdir) for row in selected]
    write_json_atomically(workdir / f"{stem}.json", results)
    (workdir / f"{stem}.md").write_text(markdown_table(title, results))
    plot_table(title, results, workdir / f"{stem}.png")
    return results


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_table_args(
    stem: str, description: str, rows: Sequence[PaperRow], argv: Sequence[str] | None = None
) -> tuple[TableConfig, Path]:
    """Parses a table's command line into ``(TableConfig, out_dir)``.

    ``--config`` (or ``--quick``) picks the preset; ``--rows``, ``--epochs``,
    ``--steps-per-epoch`` and ``--no-progress`` change it. An unknown row is a usage error.
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{stem}", description=description)
    parser.add_argument(
        "--out", type=Path, default=Path("runs") / stem, help=f"output directory (runs/{stem})"
    )
    add_preset_arguments(parser)
    parser.add_argument(
        "--rows", help=f"comma-separated rows (default all): {','.join(r.name for r in rows)}"
    )
    parser.add_argument("--epochs", type=_positive_int, help="override every row's epochs")
    parser.add_argument(
        "--steps-per-epoch", type=_positive_int, help="override every row's steps per epoch"
    )
    parser.add_argument("--no-progress", action="store_true", help="no budget lines, no bars")
    args = parser.parse_args(argv)
    config = table_preset(preset_name(parser, args)).replace(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch
    )
    if args.rows:
        config = config.replace(rows=tuple(args.rows.split(",")))
    if args.no_progress:
        config = config.replace(progress=False)
    try:
        select_rows(rows, config.rows)
    except ValueError as error:
        parser.error(str(error))
    return config, args.out


def table_main(
    stem: str,
    title: str,
    rows: Sequence[PaperRow],
    description: str,
    argv: Sequence[str] | None = None,
) -> None:
    """A table's ``main``: parse the command line, run, print the markdown."""
    config, out = parse_table_args(stem, description, rows, argv)
    run_table(stem, title, rows, config, out)
    print((out / f"{stem}.md").read_text())
