"""Table I: every scenario without and with its approximated layers, beside the paper.

Usage::

    python experiments/table1.py --out runs/table1 [--quick] [--rows 8b4s-none,8b4s-approx]

Writes ``OUT/table1.json`` (one dict per row), ``OUT/table1.md`` and one run directory per
row under ``OUT``. ``--quick`` is the 2-core CPU budget, the default the accelerator one
(both described in ``experiments/common.py``); with several devices training and
evaluation are data-parallel over all of them.
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
from optinc_jax.scenarios import get_scenario

SCENARIOS = ("8b4s", "8b8s", "8b16s", "16b4s")

ROWS = tuple(
    row
    for name in SCENARIOS
    for row in (
        PaperRow(f"{name}-none", name, "none", 100.0, 100.0),
        PaperRow(
            f"{name}-approx",
            name,
            None,
            paper_area_percent("I", name, get_scenario(name).approx),
            100.0,
        ),
    )
)


def run(config: ExperimentConfig, workdir: str | Path) -> list[dict]:
    """Runs the selected Table I rows and writes ``table1.json`` / ``table1.md``."""
    return run_table("table1", "Table I", ROWS, config, workdir)


def main(argv=None) -> None:
    """Command-line entry point."""
    table_main("table1", "Table I", ROWS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
