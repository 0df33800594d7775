"""Table I: every scenario without and with its approximated layers, beside the paper.

Usage, from the repository root::

    python -m experiments.table1 [--config smoke|quick|full] [--quick] [--out runs/table1]
        [--rows 8b4s-none,8b4s-approx] [--epochs N] [--steps-per-epoch N] [--no-progress]

Writes ``OUT/table1.json`` (one dict per row), ``OUT/table1.md``, ``OUT/table1.png`` and
one run directory per row under ``OUT``. ``--config`` picks the budget (presets in
:mod:`experiments.configs`; ``--quick`` is ``--config quick``, the 2-core CPU budget; the
default ``full`` is the accelerator one); with several accelerators training and
evaluation are data-parallel over all of them. The rows, areas and accuracies of the
paper come from :data:`optinc_jax.paper.TABLE_I`.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Sequence
from pathlib import Path

from experiments.configs import TableConfig
from experiments.tables import PaperRow, paper_scenario_name, run_table, table_main
from optinc_jax import paper

__all__ = ["ROWS", "main", "run"]

STEM, TITLE = "table1", "Table I"


def _rows() -> tuple[PaperRow, ...]:
    rows = []
    for row in paper.TABLE_I:
        name = paper_scenario_name(row.bits, row.servers)
        # The unapproximated network is the area reference: 100 % by definition.
        rows.append(PaperRow(f"{name}-none", name, "none", 100.0, row.accuracy_percent))
        # approx=None: the scenario's own selection, which is the paper's (row.approx).
        rows.append(
            PaperRow(
                f"{name}-approx",
                name,
                None,
                row.area_ratio_percent,
                row.approx_accuracy_percent,
            )
        )
    return tuple(rows)


ROWS = _rows()
"""Two rows per scenario of the paper's Table I: ``<scenario>-none``, ``<scenario>-approx``."""


def run(config: TableConfig, workdir: str | Path) -> list[dict]:
    """Runs the selected Table I rows and writes ``table1.json`` / ``.md`` / ``.png``.

    Args:
        config: rows and budget, e.g. ``experiments.configs.table_preset("quick")``.
        workdir: output directory; each row's run lies in ``workdir/<row name>/``.

    Returns:
        One dict per row, ours beside the paper's.
    """
    return run_table(STEM, TITLE, ROWS, config, workdir)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.table1 --help``)."""
    table_main(STEM, TITLE, ROWS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
