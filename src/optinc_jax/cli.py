"""The ``optinc`` command line.

Every command prints text for people, or with ``--json`` exactly one JSON document on
stdout and nothing else. Bad arguments give a one-line ``Error:`` on stderr and exit
status 2. Commands import JAX only when they need it, so ``optinc --help`` stays fast.
"""

import os

# Before NumPy or JAX is imported anywhere: one BLAS thread per process unless told otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
from collections.abc import Callable
from typing import Any

import click

from optinc_jax import area as area_model  # pure Python, no JAX

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of text."
)
"""The ``--json`` flag shared by every command; pass its value to :func:`emit`."""


def emit(result: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print a command's result as one JSON document or as text.

    Args:
        result: JSON-serializable result (dicts, lists, numbers, strings, bools).
        as_json: Print ``json.dumps(result)`` if true, else ``human(result)``.
        human: Formats ``result`` for people.
    """
    click.echo(json.dumps(result) if as_json else human(result))


@click.group()
@click.version_option(package_name="optinc-jax")
def main() -> None:
    """OptINC: optical in-network computing of quantized gradient averages."""


def _layers_option(ctx: click.Context, param: click.Parameter, value: str | None):
    """Click callback: parse ``--layers`` or fail with a one-line message."""
    del ctx, param
    if value is None:
        return None
    try:
        return area_model.parse_layers(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _area_dict(report: area_model.AreaReport) -> dict[str, Any]:
    """JSON-ready view of an area report; ``area_ratio`` is a fraction."""
    return {
        "layers": list(report.layers),
        "approx": list(report.approx),
        "mzis": report.mzis,
        "mzis_full": report.mzis_full,
        "area_ratio": report.area_ratio,
        "matrices": [matrix._asdict() for matrix in report.matrices],
    }


def _paper_dict(row: area_model.PaperAreaRow) -> dict[str, Any]:
    """Our area figure for one of the paper's rows, beside the paper's."""
    report = area_model.onn_area(row.layers, row.approx)
    return {
        "table": row.table,
        "bits": row.bits,
        "servers": row.servers,
        "layers": list(row.layers),
        "approx": list(row.approx),
        "mzis": report.mzis,
        "mzis_full": report.mzis_full,
        "area_ratio": report.area_ratio,
        "paper_area_ratio": row.area_ratio_percent / 100,
        "difference_pp": 100 * report.area_ratio - row.area_ratio_percent,
    }


def _format_area(result: dict[str, Any]) -> str:
    """Per-matrix MZI table and totals."""
    layers = "-".join(map(str, result["layers"]))
    lines = [
        f"ONN {layers}, approximated matrices: {area_model.format_approx(result['approx'])}",
        f"{'matrix':>6}  {'rows x cols':>11}  {'approx':>6}  {'MZIs full':>10}  {'MZIs':>10}",
    ]
    for matrix in result["matrices"]:
        shape = f"{matrix['rows']} x {matrix['cols']}"
        approx = "yes" if matrix["approximated"] else "no"
        lines.append(
            f"{matrix['index']:>6}  {shape:>11}  {approx:>6}  "
            f"{matrix['mzis_full']:>10,}  {matrix['mzis']:>10,}"
        )
    lines.append(
        f"{'total':>6}  {'':>11}  {'':>6}  {result['mzis_full']:>10,}  {result['mzis']:>10,}"
    )
    lines.append(
        f"area ratio: {100 * result['area_ratio']:.2f} % "
        f"({result['mzis']:,} of {result['mzis_full']:,} MZIs)"
    )
    return "\n".join(lines)


def _format_paper(rows: list[dict[str, Any]]) -> str:
    """Our area ratios beside the paper's Tables I and II."""
    structure_width = max(len("-".join(map(str, row["layers"]))) for row in rows)
    lines = [
        f"{'table':<5}  {'bits':>4}  {'servers':>7}  {'ONN structure':<{structure_width}}  "
        f"{'approx':<7}  {'ours':>7}  {'paper':>7}  {'diff (pp)':>9}"
    ]
    for row in rows:
        structure = "-".join(map(str, row["layers"]))
        lines.append(
            f"{row['table']:<5}  {row['bits']:>4}  {row['servers']:>7}  "
            f"{structure:<{structure_width}}  {area_model.format_approx(row['approx']):<7}  "
            f"{100 * row['area_ratio']:>6.2f}%  {100 * row['paper_area_ratio']:>6.1f}%  "
            f"{row['difference_pp']:>+9.2f}"
        )
    return "\n".join(lines)


@main.command("area")
@click.option(
    "--layers",
    callback=_layers_option,
    metavar="W0-W1-...",
    help="ONN layer widths, e.g. 4-64-128-256-128-64-4.",
)
@click.option(
    "--approx",
    "approx_spec",
    metavar="SPEC",
    help="Approximated weight matrices (1-based): none, all, 3, 1-6, 2,4,6 or 2-4,6. "
    "[default: none]",
)
@click.option(
    "--paper",
    is_flag=True,
    help="Compare every area figure of the paper's Tables I and II with ours.",
)
@json_option
def area_command(
    layers: tuple[int, ...] | None, approx_spec: str | None, paper: bool, as_json: bool
) -> None:
    """Count the MZIs of an ONN with and without the diagonal x unitary approximation."""
    if paper:
        if layers is not None or approx_spec is not None:
            raise click.UsageError("--paper uses the paper's structures; drop --layers/--approx")
        emit([_paper_dict(row) for row in area_model.PAPER_AREA_ROWS], as_json, _format_paper)
        return
    if layers is None:
        raise click.UsageError("give --layers (and optionally --approx), or --paper")
    try:
        report = area_model.onn_area(layers, approx_spec or "none")
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--approx'") from None
    emit(_area_dict(report), as_json, _format_area)
