"""The paper's numbers, as plain data: the one place the package reads them from.

Source: "OptINC: Optical In-Network-Computing for Scalable Distributed Learning"
(arXiv:2603.28290), Tables I and II, section III-C (cascade), section IV (Fig. 6, Fig. 7).
Everything here is what the paper *reports*; nothing in the package computes a result from
these numbers. They are what results are compared against (the CLI's ``area --paper``, the
scenarios' layer structures, the table experiments). This module imports nothing.

Percentages are kept as printed (``39.3`` means 39.3 %). Weight matrices are 1-based: matrix
``i`` maps layer ``i - 1`` to layer ``i`` of the ONN structure.
"""

from typing import NamedTuple

__all__ = [
    "CASCADE_AREA_OVERHEAD_PERCENT",
    "CASCADE_SERVERS",
    "CASCADE_UNIT_SERVERS",
    "COMMUNICATION_RING",
    "LATENCY_REDUCTION_PERCENT",
    "LATENCY_SETTINGS",
    "LLAMA_STYLE_MODEL",
    "ONN_STRUCTURES",
    "TABLE_I",
    "TABLE_II",
    "TRAINING_WITH_OPTINC",
    "AreaRow",
    "PaperError",
    "TableIIRow",
    "TableIRow",
    "area_rows",
]


class AreaRow(NamedTuple):
    """One area figure of Table I or II (the approximated networks only).

    Attributes:
        table: ``"I"`` or ``"II"``.
        bits: gradient bit width ``B``.
        servers: number of servers ``N``.
        layers: ONN structure.
        approx: 1-based approximated weight matrices.
        area_ratio_percent: the paper's area ratio in percent, as printed (0.1 precision).
    """

    table: str
    bits: int
    servers: int
    layers: tuple[int, ...]
    approx: tuple[int, ...]
    area_ratio_percent: float


class TableIRow(NamedTuple):
    """One row of Table I: a scenario without and with matrix approximation.

    Attributes:
        bits: gradient bit width ``B``.
        servers: number of servers ``N``.
        layers: ONN structure (layer widths, inputs first).
        approx: 1-based weight matrices approximated in the approximated row.
        area_ratio_percent: area ratio of the approximated row (the other row is 100 %).
        accuracy_percent: ONN accuracy without approximation.
        approx_accuracy_percent: ONN accuracy with approximation.
    """

    bits: int
    servers: int
    layers: tuple[int, ...]
    approx: tuple[int, ...]
    area_ratio_percent: float
    accuracy_percent: float
    approx_accuracy_percent: float


class PaperError(NamedTuple):
    """One entry of Table II's error column: an error value and its share of the errors.

    Attributes:
        value: the error ``t_hat - t`` in LSBs, or ``None`` where the value was lost in the
            paper's text extraction (only the share survived).
        share_percent: share of the wrong outputs with this error, in percent.
    """

    value: int | None
    share_percent: float


class TableIIRow(NamedTuple):
    """One row of Table II (16-bit, 4 servers, structure of ``ONN_STRUCTURES[(16, 4)]``).

    Attributes:
        approx: 1-based weight matrices approximated.
        accuracy_percent: ONN accuracy.
        errors: the error values with their relative shares (empty: no errors).
        area_ratio_percent: area normalised to the network without approximation.
    """

    approx: tuple[int, ...]
    accuracy_percent: float
    errors: tuple[PaperError, ...]
    area_ratio_percent: float


ONN_STRUCTURES: dict[tuple[int, int], tuple[int, ...]] = {
    (8, 4): (4, 64, 128, 256, 128, 64, 4),
    (8, 8): (4, 64, 128, 256, 512, 256, 128, 64, 4),
    (8, 16): (4, 64, 128, 256, 512, 1024, 512, 256, 128, 64, 4),
    (16, 4): (4, 64, 128, 256, 512, 256, 128, 64, 8),
}
"""ONN structure of each ``(bits, servers)`` scenario of Table I."""

TABLE_I: tuple[TableIRow, ...] = (
    TableIRow(8, 4, ONN_STRUCTURES[(8, 4)], (1, 2, 3, 4, 5, 6), 39.3, 100.0, 100.0),
    TableIRow(8, 8, ONN_STRUCTURES[(8, 8)], (2, 3, 4, 5, 6, 7), 40.9, 100.0, 100.0),
    TableIRow(8, 16, ONN_STRUCTURES[(8, 16)], (2, 3, 4, 5, 6, 7, 8, 9), 40.4, 100.0, 100.0),
    TableIRow(16, 4, ONN_STRUCTURES[(16, 4)], (4, 5, 6), 49.3, 100.0, 100.0),
)
"""Table I: the four scenarios ("All layers" of 8b4s is matrices 1-6)."""

TABLE_II: tuple[TableIIRow, ...] = (
    TableIIRow((4, 5, 6), 100.0, (), 49.3),
    # The text's own example, "1(90%)", reads as this row's first error value.
    TableIIRow((4, 5, 6, 7), 99.99986, (PaperError(None, 90.0), PaperError(None, 10.0)), 47.9),
    TableIIRow((4, 5, 6, 7, 8), 99.99999, (PaperError(1024, 100.0),), 47.4),
    TableIIRow(
        (3, 4, 5, 6),
        99.98891,
        (PaperError(None, 99.0), PaperError(None, 0.9), PaperError(None, 0.1)),
        43.7,
    ),
    TableIIRow(
        (3, 4, 5, 6, 7),
        99.99936,
        (PaperError(None, 79.5), PaperError(None, 17.0), PaperError(12, 3.5)),
        42.2,
    ),
)
"""Table II: 16-bit / 4 servers with different approximated matrices."""

CASCADE_SERVERS = 16
"""Servers served by the paper's two-level cascade (Fig. 5)."""

CASCADE_UNIT_SERVERS = 4
"""Servers per OptINC unit in the cascade (five 8-bit/4-server units in two levels)."""

CASCADE_AREA_OVERHEAD_PERCENT = 10.5
"""Extra MZIs of the cascade's ONN (two approximated 64 x 64 matrices inserted after the
first and before the last layer) against Table I's 8-bit/4-server structure ("about")."""

COMMUNICATION_RING: dict[int, float] = {4: 1.5, 8: 1.75, 16: 1.875}
"""Fig. 6: data each server sends with ring all-reduce, normalised to the gradient size
(``2 (N - 1) / N``); OptINC sends 1 at every server count."""

LATENCY_SETTINGS: dict[str, float] = {
    "gpu_tflops": 60.0,
    "utilization": 0.6,
    "transceivers": 8,
    "transceiver_gbps": 800.0,
    "servers": 4,
}
"""Fig. 7(b)'s stated setting: H100 GPUs at 60 TFLOP/s, utilisation 0.6, eight full-duplex
800 Gb/s transceivers, four servers. Batch sizes and bandwidth accounting are not given."""

LATENCY_REDUCTION_PERCENT: dict[str, float] = {"resnet50": 25.0, "llama": 17.0}
"""Fig. 7(b): reduction of the per-iteration latency by OptINC against ring all-reduce at
N = 4 ("over 25 %" for ResNet-50 on CIFAR-100, "around 17 %" for the LLaMA-style model)."""

LLAMA_STYLE_MODEL: dict[str, int] = {"layers": 8, "hidden": 384, "heads": 8, "steps": 50_000}
"""The paper's LLaMA-style network (trained on Wikipedia-1B for 50,000 steps)."""

TRAINING_WITH_OPTINC: dict[str, float] = {
    "resnet50_epochs": 300,
    "resnet50_accuracy_drop_percent": 0.03,
    "resnet50_accuracy_drop_injected_percent": 0.55,
    "llama_loss_increase": 0.018,
    "llama_loss_increase_injected": 0.02,
    "block_quantization_overhead_percent": 0.4,
}
"""Fig. 7(a): training through OptINC against exact averaging, without and with the Table II
errors injected (ResNet-50 on CIFAR-100, 300 epochs; the LLaMA-style model); the block
quantization's synchronisation cost was "less than 0.4 %"."""


def area_rows() -> tuple[AreaRow, ...]:
    """Every area figure of Tables I and II.

    Returns:
        One tuple per approximated row: Table I's four, then Table II's five.

    Examples:
        >>> [row.area_ratio_percent for row in area_rows()][:4]
        [39.3, 40.9, 40.4, 49.3]
    """
    table_i = tuple(
        AreaRow("I", row.bits, row.servers, row.layers, row.approx, row.area_ratio_percent)
        for row in TABLE_I
    )
    table_ii = tuple(
        AreaRow("II", 16, 4, ONN_STRUCTURES[(16, 4)], row.approx, row.area_ratio_percent)
        for row in TABLE_II
    )
    return table_i + table_ii
