"""Table II: 16-bit, 4 servers, five choices of approximated layers, beside the paper.

Usage, from the repository root::

    python -m experiments.table2 [--config smoke|quick|full] [--quick] [--out runs/table2]
        [--rows 16b4s-4-6,16b4s-3-7] [--epochs N] [--steps-per-epoch N] [--no-progress]

Writes ``OUT/table2.json`` (one dict per row, with the error histogram and each error
value's share of the wrong samples), ``OUT/table2.md``, ``OUT/table2.png`` and one run
directory per row. Budgets as in :mod:`experiments.configs`. The rows, areas, accuracies
and the error column (every share; values lost from the paper's text print as ``?``)
come from :data:`optinc_jax.paper.TABLE_II`.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Sequence
from pathlib import Path

from experiments.configs import TableConfig
from experiments.tables import PaperRow, paper_scenario_name, run_table, table_main
from optinc_jax import paper
from optinc_jax.photonics.area import format_approx

__all__ = ["ROWS", "SCENARIO", "main", "run"]

STEM, TITLE = "table2", "Table II"

SCENARIO = paper_scenario_name(16, 4)
"""Table II's scenario: 16-bit values, 4 servers (``paper.ONN_STRUCTURES[(16, 4)]``)."""

ROWS = tuple(
    PaperRow(
        f"{SCENARIO}-{format_approx(row.approx)}",
        SCENARIO,
        format_approx(row.approx),
        row.area_ratio_percent,
        row.accuracy_percent,
        row.errors,
    )
    for row in paper.TABLE_II
)
"""One row per row of the paper's Table II, named ``16b4s-<approximated matrices>``."""


def run(config: TableConfig, workdir: str | Path) -> list[dict]:
    """Runs the selected Table II rows and writes ``table2.json`` / ``.md`` / ``.png``.

    Args:
        config: rows and budget, e.g. ``experiments.configs.table_preset("quick")``.
        workdir: output directory; each row's run lies in ``workdir/<row name>/``.

    Returns:
        One dict per row, ours beside the paper's.
    """
    return run_table(STEM, TITLE, ROWS, config, workdir)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.table2 --help``)."""
    table_main(STEM, TITLE, ROWS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
