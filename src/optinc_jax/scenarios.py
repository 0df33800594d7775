"""OptINC scenarios: bit width, server count, ONN structure and approximated layers.

The registry holds the paper's Table I rows; users register their own with
:func:`register_scenario`.
"""

from typing import NamedTuple

__all__ = [
    "SCENARIOS",
    "Scenario",
    "get_scenario",
    "make_scenario",
    "register_scenario",
]


class Scenario(NamedTuple):
    """One OptINC configuration.

    Attributes:
        name: registry key, e.g. ``"8b4s"``.
        bits: gradient bit width B (even).
        servers: number of servers N.
        layers: ONN layer widths, inputs first and PAM4 outputs (B/2) last.
        approx: 1-based indices of the weight matrices approximated by diagonal x unitary
            blocks (matrix i maps layer i-1 to layer i).
        inputs: ONN input count I (equal to ``layers[0]``).
    """

    name: str
    bits: int
    servers: int
    layers: tuple[int, ...]
    approx: tuple[int, ...]
    inputs: int = 4

    @property
    def num_matrices(self) -> int:
        """Number of weight matrices, ``len(layers) - 1``."""
        return len(self.layers) - 1

    @property
    def layers_string(self) -> str:
        """Layer widths joined with dashes, the paper's notation."""
        return "-".join(str(width) for width in self.layers)


def make_scenario(
    name: str,
    *,
    bits: int,
    servers: int,
    layers: tuple[int, ...],
    approx: tuple[int, ...] = (),
    inputs: int = 4,
) -> Scenario:
    """Builds a validated :class:`Scenario`.

    Args:
        name: identifier.
        bits: gradient bit width B; even and >= 2.
        servers: server count N >= 1.
        layers: ONN widths; ``layers[0] == inputs`` and ``layers[-1] == bits // 2``.
        approx: 1-based weight-matrix indices to approximate, each in ``1..len(layers)-1``.
        inputs: ONN input count I; must divide ``bits // 2``.

    Returns:
        The scenario.

    Raises:
        ValueError: if any field is inconsistent; the message names the value.

    Examples:
        >>> make_scenario("tiny", bits=4, servers=2, layers=(2, 16, 2), inputs=2).approx
        ()
    """
    if bits < 2 or bits % 2:
        raise ValueError(f"bits must be an even integer >= 2, got {bits}")
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    symbols = bits // 2
    if inputs < 1 or symbols % inputs:
        raise ValueError(
            f"inputs={inputs} must divide the {symbols} PAM4 symbols of a {bits}-bit value"
        )
    layers = tuple(int(width) for width in layers)
    if len(layers) < 2 or min(layers) < 1:
        raise ValueError(f"layers must hold >= 2 positive widths, got {layers}")
    if layers[0] != inputs or layers[-1] != symbols:
        raise ValueError(
            f"layers {layers} must start with inputs={inputs} and end with the "
            f"{symbols} PAM4 outputs of a {bits}-bit value"
        )
    approx = tuple(sorted(int(index) for index in approx))
    bad = [index for index in approx if not 1 <= index <= len(layers) - 1]
    if bad or len(set(approx)) != len(approx):
        raise ValueError(
            f"approx {approx} must be distinct weight-matrix indices in 1..{len(layers) - 1}"
        )
    return Scenario(name, bits, servers, layers, approx, inputs)


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        make_scenario(
            "8b4s", bits=8, servers=4, layers=(4, 64, 128, 256, 128, 64, 4), approx=range(1, 7)
        ),
        make_scenario(
            "8b8s",
            bits=8,
            servers=8,
            layers=(4, 64, 128, 256, 512, 256, 128, 64, 4),
            approx=range(2, 8),
        ),
        make_scenario(
            "8b16s",
            bits=8,
            servers=16,
            layers=(4, 64, 128, 256, 512, 1024, 512, 256, 128, 64, 4),
            approx=range(2, 10),
        ),
        make_scenario(
            "16b4s",
            bits=16,
            servers=4,
            layers=(4, 64, 128, 256, 512, 256, 128, 64, 8),
            approx=(4, 5, 6),
        ),
    )
}


def register_scenario(scenario: Scenario, *, overwrite: bool = False) -> None:
    """Adds a user-defined scenario to :data:`SCENARIOS`.

    Args:
        scenario: built with :func:`make_scenario`.
        overwrite: replace an existing entry of the same name.

    Raises:
        ValueError: if the name is taken and ``overwrite`` is false.
    """
    if scenario.name in SCENARIOS and not overwrite:
        raise ValueError(f"scenario {scenario.name!r} exists; pass overwrite=True to replace it")
    SCENARIOS[scenario.name] = make_scenario(
        scenario.name,
        bits=scenario.bits,
        servers=scenario.servers,
        layers=scenario.layers,
        approx=scenario.approx,
        inputs=scenario.inputs,
    )


def get_scenario(name: str) -> Scenario:
    """Looks up a registered scenario.

    Args:
        name: registry key such as ``"16b4s"``.

    Returns:
        The scenario.

    Raises:
        ValueError: if no scenario of that name exists; the message lists the known ones.

    Examples:
        >>> get_scenario("16b4s").layers[-1]
        8
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; known scenarios: {', '.join(sorted(SCENARIOS))}"
        ) from None
