"""Named budgets of the experiments: ``smoke`` (tests), ``quick`` (2-core CPU), ``full``.

A preset is a frozen config value; the command line picks one with ``--config NAME`` and
changes single fields with flags such as ``--rows`` or ``--epochs``.

Table budgets (:class:`TableConfig`, Tables I and II). A row whose dataset has at most
``full_pass_samples`` samples trains with its scenario's preset
(:meth:`~optinc_jax.learning.config.TrainConfig.for_scenario`) in full (one pass per
epoch, evaluated as the preset says, stop at the first projected 100 %). A larger one is
*capped*: it trains ``capped_epochs`` epochs (``None``: the preset's) of
``capped_steps_per_epoch``
steps (sampled with replacement when that is more than one pass), evaluated every
``capped_eval_every`` epochs (``None``: once, at the end); when the epochs are capped, loss
stage 2 starts at :data:`SWITCH_FRACTION` of them, as in the default config. A row trained
for fewer epochs than its preset's skips the preset's hinge finishing (``finish_rounds``,
8b8s): after a cut schedule most of the grid is hard, and its rounds would cost far more
than the training.

========  ======================  =======================================================
preset    datasets trained full   larger datasets
========  ======================  =======================================================
smoke     none                    1 epoch x 2 steps, one evaluation (tests, seconds)
quick     <= 65,536 (8b4s)        20 epochs x 100 steps, one evaluation at the end
full      <= 256,000 (8b4s)       up to 130 epochs x 2,000 steps, evaluated every 5
========  ======================  =======================================================

Accelerator-check budgets (:class:`AcceleratorCheckConfig`): ``full`` trains 8b8s and
times a 16b4s evaluation (about 8 minutes on a GPU); ``quick`` does both on 8b4s with one
epoch of 5 steps (a CPU minute); ``smoke`` one epoch of 2 steps (tests).
"""

import argparse
import dataclasses

from optinc_jax.scenarios import Scenario

__all__ = [
    "CHECK_PRESETS",
    "DEFAULT_PRESET",
    "SWITCH_FRACTION",
    "TABLE_PRESETS",
    "AcceleratorCheckConfig",
    "TableConfig",
    "add_preset_arguments",
    "check_preset",
    "preset_name",
    "table_preset",
]

SWITCH_FRACTION = 0.6
"""Share of capped epochs before loss stage 2 (the default config switches at 80 of 130)."""

DEFAULT_PRESET = "full"
"""The preset of a command line without ``--config`` (or ``--quick``)."""


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """What a table run does: the rows, and the budget each row trains on.

    Attributes:
        preset: the preset's name, shown in every row's budget line.
        full_pass_samples: datasets of at most this many samples train with the scenario's
            preset in full; larger ones are capped (module docstring).
        capped_epochs: epochs of a capped row; ``None`` keeps the preset's.
        capped_steps_per_epoch: optimizer steps per epoch of a capped row.
        capped_eval_every: evaluation period of a capped row in epochs; ``None`` evaluates
            once, at the end.
        rows: row names to run, ``None`` for all.
        epochs: overrides every row's epochs (capped or not).
        steps_per_epoch: overrides every row's steps per epoch.
        scenario: runs every row on this scenario (a value or a registered name) instead of
            the table's: smoke tests on a tiny network; the paper columns then do not apply.
        progress: print each row's budget and show progress bars.
    """

    preset: str
    full_pass_samples: int
    capped_epochs: int | None
    capped_steps_per_epoch: int
    capped_eval_every: int | None = None
    rows: tuple[str, ...] | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    scenario: str | Scenario | None = None
    progress: bool = True

    def replace(self, **changes) -> "TableConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class AcceleratorCheckConfig:
    """What the accelerator check does.

    Attributes:
        preset: the preset's name (recorded in the report).
        train_scenario: scenario trained with its approximated matrices (value or name).
        eval_scenario: scenario of the timed exhaustive evaluation of a random ONN.
        epochs: training epochs; ``None`` keeps the default config's (130).
        steps_per_epoch: steps per epoch; ``None`` is one pass over the data.
        train_minutes: wall-time limit of the training; the last checkpoint is evaluated
            when it runs out.
        chunk_size: samples per chunk of the timed evaluation.
    """

    preset: str
    train_scenario: str | Scenario = "8b8s"
    eval_scenario: str | Scenario = "16b4s"
    epochs: int | None = None
    steps_per_epoch: int | None = None
    train_minutes: float = 6.0
    chunk_size: int = 1 << 18

    def replace(self, **changes) -> "AcceleratorCheckConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


TABLE_PRESETS: dict[str, TableConfig] = {
    "smoke": TableConfig(
        "smoke", full_pass_samples=0, capped_epochs=1, capped_steps_per_epoch=2, progress=False
    ),
    "quick": TableConfig(
        "quick", full_pass_samples=1 << 16, capped_epochs=20, capped_steps_per_epoch=100
    ),
    "full": TableConfig(
        "full",
        full_pass_samples=2000 * 128,
        capped_epochs=None,
        capped_steps_per_epoch=2000,
        capped_eval_every=5,
    ),
}
"""Table budgets by name (module docstring)."""

CHECK_PRESETS: dict[str, AcceleratorCheckConfig] = {
    "smoke": AcceleratorCheckConfig(
        "smoke",
        train_scenario="8b4s",
        eval_scenario="8b4s",
        epochs=1,
        steps_per_epoch=2,
        chunk_size=1 << 12,
    ),
    "quick": AcceleratorCheckConfig(
        "quick",
        train_scenario="8b4s",
        eval_scenario="8b4s",
        epochs=1,
        steps_per_epoch=5,
        chunk_size=1 << 14,
    ),
    "full": AcceleratorCheckConfig("full"),
}
"""Accelerator-check budgets by name (module docstring)."""


def _preset(presets: dict, name: str):
    try:
        return presets[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(presets)}") from None


def table_preset(name: str = DEFAULT_PRESET) -> TableConfig:
    """The table budget called ``name``.

    Args:
        name: ``"smoke"``, ``"quick"`` or ``"full"``.

    Returns:
        The preset.

    Raises:
        ValueError: on an unknown name; the message lists the known ones.

    Examples:
        >>> table_preset("quick").capped_steps_per_epoch
        100
    """
    return _preset(TABLE_PRESETS, name)


def check_preset(name: str = DEFAULT_PRESET) -> AcceleratorCheckConfig:
    """The accelerator-check budget called ``name``.

    Args:
        name: ``"smoke"``, ``"quick"`` or ``"full"``.

    Returns:
        The preset.

    Raises:
        ValueError: on an unknown name; the message lists the known ones.

    Examples:
        >>> check_preset("full").eval_scenario
        '16b4s'
    """
    return _preset(CHECK_PRESETS, name)


def add_preset_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config NAME`` and its alias ``--quick`` (= ``--config quick``) to a parser."""
    parser.add_argument(
        "--config",
        choices=tuple(TABLE_PRESETS),
        help="budget preset: smoke (tests), quick (2-core CPU), full (accelerators; default)",
    )
    parser.add_argument("--quick", action="store_true", help="alias of --config quick")


def preset_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The preset a parsed command line selects (exits with a usage error on a conflict)."""
    if args.quick and args.config not in (None, "quick"):
        parser.error(f"--quick contradicts --config {args.config}")
    return "quick" if args.quick else args.config or DEFAULT_PRESET
