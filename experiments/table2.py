"""Table II: 16-bit, 4 servers, five choices of approximated layers, beside the paper.

Usage::

    python experiments/table2.py --out runs/table2 [--quick] [--rows 16b4s-4-6,16b4s-3-7]

Writes ``OUT/table2.json`` (one dict per row, with the error histogram and each error
value's share of the wrong samples), ``OUT/table2.md`` and one run directory per row.
Budgets as in ``experiments/common.py``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path

from common import (
    ExperimentConfig,
    PaperRow,
    paper_area_percent,
    run_table,
    table_main,
)
from optinc_jax.photonics.area import parse_approx

# (approx, paper accuracy %, paper error values as printed; "" where the text was lost)
PAPER = (
    ("4-6", 100.0, ""),
    ("4-7", 99.99986, ""),
    ("4-8", 99.99999, "1024 (100 %)"),
    ("3-6", 99.98891, ""),
    ("3-7", 99.99936, "12 (3.5 %)"),
)

ROWS = tuple(
    PaperRow(
        f"16b4s-{approx}",
        "16b4s",
        approx,
        paper_area_percent("II", "16b4s", parse_approx(approx, 8)),
        accuracy,
        errors,
    )
    for approx, accuracy, errors in PAPER
)


def run(config: ExperimentConfig, workdir: str | Path) -> list[dict]:
    """Runs the selected Table II rows and writes ``table2.json`` / ``table2.md``."""
    return run_table("table2", "Table II", ROWS, config, workdir)


def main(argv=None) -> None:
    """Command-line entry point."""
    table_main("table2", "Table II", ROWS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
