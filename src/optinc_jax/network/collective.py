"""OptINC as a JAX collective: a drop-in ``pmean`` for ``jax.shard_map`` and ``jax.pmap``.

:func:`pmean` goes wherever ``jax.lax.pmean(tree, axis_name)`` goes and returns the average
of the servers' gradients as OptINC delivers it. Each float leaf of the pytree runs the
whole data path of SPEC section 2 on every server (the servers are the members of the
named axis, ``N`` of them):

1. the leaf is flattened and zero-padded to blocks of ``block_size`` elements;
2. per block, the local exponent ``e = floor(log2 max|g|) + 1``; the servers agree on the
   largest with a ``lax.pmax`` (the exponent exchange, counted separately);
3. block quantization to offset binary ``u`` in ``[0, 2^B)``;
4. every server puts ``u``'s ``K = B / 2`` PAM4 symbols on its fiber; the optical fan-in
   into the unit is a ``lax.all_gather`` (of the packed symbols: a ``uint8`` carries the
   four symbols of an 8-bit value, ``s_k = (u >> 2k) & 3``);
5. the preprocessing unit, the OptINC function and the receiver, by ``mode``:

   - ``"ideal"``: the exact target ``t = floor((1/N) sum_n u_n)`` in integers. The
     preprocessing is lossless (``sum_n u_n = sum_m (4^r)^m (N x_m)``), so the integer sum
     of the gathered values *is* the weighted sum of the preprocessed inputs; any ``N >= 1``
     works (no unit has to exist for it).
   - ``"onn"``: a trained ONN in the loop, exactly. The ONN is a fixed function of the
     preprocessed input ``x``, which takes only ``L^I`` distinct values
     (``L = N (4^r - 1) + 1``; 28,561 for 8 bits / 4 servers), so it is evaluated once on
     all of them into an :class:`OnnTable` of received values ``t_hat``
     (:func:`onn_lookup_table`, from a run directory or exported weights). Per element the
     preprocessed counts ``a_m = N x_m = sum_n sum_{j<r} 4^j s_{n, m r + j}`` give the table
     index ``sum_m a_m L^m`` (the exhaustive dataset's order) and ``t_hat = table[index]``
     is exactly what the network followed by the receiver would output.
   - ``"inject"``: ``t_hat = t + error`` with errors drawn from an :class:`ErrorModel`
     (a Table II row or a run's measured error histogram, see :func:`error_model`),
     independently per element with a PRNG ``key``.

6. the splitting unit sends ``t_hat`` (``K`` symbols) to every server, which dequantizes it
   with the agreed exponents; every server ends with the same values.

**Rounding.** The paper's unit floors (``rounding="floor"``, the default): the discarded
remainder biases the average downwards by ``(N - 1) / (2 N)`` of a quantization step on
average (0.375 for ``N = 4``, 0.4375 for ``N = 8``). ``rounding="nearest"`` rounds
``sum u / N`` to the nearest integer, ties to even, and has no such bias. Measured against
``lax.pmean`` on ``2^18`` standard-normal values per server, 8 bits, 256-element blocks, in
units of each block's step ``2^e_max / (2^(B-1) - 1)`` (``tests/test_collective.py``):

==========  ====================  ====================
rounding    N = 4: bias (rms)     N = 8: bias (rms)
==========  ====================  ====================
floor       -0.376 (0.490)        -0.437 (0.533)
nearest     -0.000 (0.339)        +0.000 (0.310)
==========  ====================  ====================

**Non-finite gradients.** A block holding NaN or +-Inf on any server gets the exponent
``NONFINITE_EXPONENT`` of :mod:`optinc_jax.encoding.quantize`; the ``pmax`` carries it to
every server and the whole block comes back as NaN on every server; the other blocks are
exact. A diverging step is therefore visible at once, never averaged into plausible numbers.

**Communication counters.** :func:`pmean_with_stats` also returns a :class:`CommStats` of
static Python ints computed while tracing, from the shapes of the arrays that cross the
simulated wire: the gradient payload (``B`` bits per element, including the zero padding
of each leaf's last block) and the exponent exchange (one exponent per block, as many bits
as the dtype's exponent field: 8 for float32, which holds every block exponent
``e + 126`` in ``[1, 254]`` and 255 for a non-finite block), each sent once and received
once, as in the paper's 0.39 % overhead for 8-bit values and 256-element blocks.

**Speed.** The quantizer and dequantizer are :func:`~optinc_jax.encoding.quantize.
quantize_block_codes` and :func:`~optinc_jax.encoding.quantize.dequantize_block_codes`,
the cores of the encoding floor (exact power-of-two scaling instead of ``jnp.ldexp``, which
costs a ``frexp`` and a float ``pow`` per element); the servers' codes travel as ``uint8``
(8 bits), and the server sum is ``N`` integer adds. See ``benchmarks/bench_collective.py``
for the cost against ``lax.pmean``.

**Server counts.** ``N`` is the size of the named axis (``lax.psum(1, axis_name)``). In
``"onn"`` and ``"inject"`` modes the unit's server count must equal ``N``. More servers than
one unit serves go through a cascade of units (:mod:`optinc_jax.network.cascade`, paper
section III-C): ``mode="onn"`` with a :class:`~optinc_jax.network.cascade.CascadeTable`
(the trained level networks, tabulated) and ``mode="ideal"`` with ``cascade=`` (perfect
units: ``"exact"`` gives ``floor(sum u / C)``, ``"naive"`` floors at every level). The
gathered codes are padded with zero servers to the cascade's capacity ``C >= N`` (unused
inputs are zeros: no light, code 0, not the zero gradient's code ``2^(B-1)``) and the
cascade's code ``t = floor(sum u / C)`` is read as the code ``t C / N`` (the servers know
``N``), the paper's convention for a partly used cascade: the value is exact up to the
floor, ``C / N`` code steps at most.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from optinc_jax.encoding.dataset import dataset_chunks, make_dataset_spec
from optinc_jax.encoding.pam4 import num_symbols
from optinc_jax.encoding.quantize import (
    DEFAULT_BLOCK_SIZE,
    block_exponents,
    dequantize_block_codes,
    quantize_block_codes,
    to_blocks,
)
from optinc_jax.network.cascade import (
    Cascade,
    CascadeTable,
    cascade_average_codes,
    cascade_lookup,
)
from optinc_jax.network.leaves import axis_size, dtype_groups, float_leaves, require_sum_fits
from optinc_jax.paper import TableIIRow
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "MODES",
    "ROUNDINGS",
    "CommStats",
    "ErrorModel",
    "OnnTable",
    "OptincAllReduceState",
    "average_codes",
    "error_model",
    "exact_onn_table",
    "make_onn_table",
    "onn_lookup_table",
    "optinc_allreduce",
    "pmean",
    "pmean_with_stats",
]

MODES = ("ideal", "onn", "inject")
"""What computes the average: the exact function, a tabulated ONN, or injected errors."""

ROUNDINGS = ("floor", "nearest")
"""How ``sum u / N`` becomes an integer: the paper's floor, or nearest (ties to even)."""

TABLE_II_BITS = 16
TABLE_II_SERVERS = 4
"""Table II's scenario (the 16-bit / 4-server row of Table I)."""

_TABLE_CHUNK = 1 << 16  # ONN inputs evaluated per chunk while building a table


# --------------------------------------------------------------------------- counters


class CommStats(NamedTuple):
    """Data one server sends and receives in one collective call (static, from shapes).

    Attributes:
        collective: ``"optinc"``, ``"ring"`` or ``"ring-quantized"``.
        servers: number of servers ``N``.
        elements: gradient elements per server (sum of the leaves' sizes, no padding).
        gradient_bytes: one server's gradient as the collective carries it (``B`` bits per
            element for OptINC and the quantized ring, the dtype's size for the float ring),
            rounded up to whole bytes; the normalisation of :attr:`sent_ratio`.
        payload_bytes_sent: gradient data sent per server, bytes.
        payload_bytes_received: gradient data received per server, bytes.
        exponent_bytes_sent: block exponents sent per server, bytes.
        exponent_bytes_received: block exponents received per server, bytes.
        rounds: sequential communication rounds of gradient data (OptINC 1, ring
            ``2 (N - 1)``).
    """

    collective: str
    servers: int
    elements: int
    gradient_bytes: int
    payload_bytes_sent: int
    payload_bytes_received: int
    exponent_bytes_sent: int
    exponent_bytes_received: int
    rounds: int

    @classmethod
    def from_bits(
        cls,
        collective: str,
        servers: int,
        elements: int,
        *,
        gradient_bits: int,
        payload_bits_sent: int,
        payload_bits_received: int,
        exponent_bits_sent: int = 0,
        exponent_bits_received: int = 0,
        rounds: int,
    ) -> "CommStats":
        """Counters given in bits, each rounded up to whole bytes."""
        return cls(
            collective,
            servers,
            elements,
            -(-gradient_bits // 8),
            -(-payload_bits_sent // 8),
            -(-payload_bits_received // 8),
            -(-exponent_bits_sent // 8),
            -(-exponent_bits_received // 8),
            rounds,
        )

    @property
    def bytes_sent(self) -> int:
        """Everything one server sends, bytes."""
        return self.payload_bytes_sent + self.exponent_bytes_sent

    @property
    def bytes_received(self) -> int:
        """Everything one server receives, bytes."""
        return self.payload_bytes_received + self.exponent_bytes_received

    @property
    def sent_ratio(self) -> float:
        """Gradient data sent per server over the gradient size (Fig. 6's y axis)."""
        return self.payload_bytes_sent / self.gradient_bytes if self.gradient_bytes else 0.0

    @property
    def exponent_overhead(self) -> float:
        """Exponent data sent per server over the gradient size."""
        return self.exponent_bytes_sent / self.gradient_bytes if self.gradient_bytes else 0.0


# ----------------------------------------------------------------------- ONN as a table


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["table"],
    meta_fields=["bits", "servers", "inputs", "accuracy", "source"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class OnnTable:
    """An OptINC unit's function on every distinct preprocessed input, as a lookup table.

    A pytree whose only array is ``table``; the rest is static metadata, so the table can be
    closed over or passed through ``jax.jit`` / ``shard_map`` alike.

    Attributes:
        table: ``[L^I]`` int32 received values ``t_hat`` (after the receiver), indexed by
            ``sum_m a_m L^m`` with ``a_m = N x_m`` and ``L = N (4^r - 1) + 1``.
        bits: gradient bit width ``B``.
        servers: the unit's server count ``N``.
        inputs: ONN inputs ``I``.
        accuracy: fraction of the entries equal to the exact target (1.0: exact unit).
        source: where the table came from (a path, ``"exact"``, ...).
    """

    table: jax.Array
    bits: int
    servers: int
    inputs: int = 4
    accuracy: float = 1.0
    source: str = ""

    @property
    def symbols_per_input(self) -> int:
        """PAM4 symbols merged into one ONN input, ``r = K / I``."""
        return self.bits // 2 // self.inputs

    @property
    def levels(self) -> int:
        """Values of one preprocessed count ``a_m``, ``L = N (4^r - 1) + 1``."""
        return self.servers * (4**self.symbols_per_input - 1) + 1


def _table_targets(spec) -> np.ndarray:
    """Exact targets ``t`` of every grid point of a dataset spec, ``[L^I]`` int32."""
    targets = np.empty(spec.size, np.int32)
    for start, samples, valid in dataset_chunks(spec, min(_TABLE_CHUNK, spec.size)):
        count = int(np.sum(np.asarray(valid)))
        targets[start : start + count] = np.asarray(samples.target)[:count]
    return targets


def exact_onn_table(bits: int, servers: int, inputs: int = 4) -> OnnTable:
    """The table of an exact unit (a 100 % accurate ONN): ``t_hat = t`` on every input.

    Args:
        bits: bit width ``B``; even, in ``[2, 30]``.
        servers: server count ``N >= 1``.
        inputs: ONN inputs ``I``, dividing ``K = B / 2``.

    Returns:
        The :class:`OnnTable`, ``accuracy = 1.0``, ``source = "exact"``.

    Raises:
        ValueError: on an invalid ``(bits, servers, inputs)`` combination.

    Examples:
        >>> exact_onn_table(8, 4).table.shape
        (28561,)
    """
    spec = make_dataset_spec(bits, servers, inputs)
    return OnnTable(jnp.asarray(_table_targets(spec)), spec.bits, spec.servers, spec.inputs)


def make_onn_table(
    values: jax.typing.ArrayLike,
    *,
    bits: int,
    servers: int,
    inputs: int = 4,
    source: str = "values",
) -> OnnTable:
    """An :class:`OnnTable` from given received values, its accuracy measured.

    Args:
        values: ``[L^I]`` integers in ``[0, 2^bits)``: the unit's output on every
            preprocessed input, in the exhaustive dataset's order.
        bits: bit width ``B``.
        servers: the unit's server count ``N``.
        inputs: ONN inputs ``I``.
        source: a description kept in the table.

    Returns:
        The table, with ``accuracy`` the fraction of entries equal to the exact target.

    Raises:
        ValueError: on an invalid spec, a non-integer ``values``, the wrong length, or
            values outside ``[0, 2^bits)``.

    Examples:
        >>> exact = exact_onn_table(2, 2, 1)
        >>> make_onn_table(exact.table.at[0].set(1), bits=2, servers=2, inputs=1).accuracy
        0.8571428571428571
    """
    spec = make_dataset_spec(bits, servers, inputs)
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"values must have an integer dtype, got {values.dtype}")
    if values.shape != (spec.size,):
        raise ValueError(
            f"values must have shape ({spec.size},) (every input of {bits} bits, {servers} "
            f"servers, {inputs} inputs), got {values.shape}"
        )
    if values.size and (values.min() < 0 or values.max() >= 2**bits):
        raise ValueError(
            f"values must lie in [0, {2**bits}), got values in [{values.min()}, {values.max()}]"
        )
    accuracy = float(np.mean(values == _table_targets(spec)))
    return OnnTable(
        jnp.asarray(values, jnp.int32), spec.bits, spec.servers, spec.inputs, accuracy, source
    )


def _table_from_run(path: Path) -> OnnTable:
    """Table of a run directory's projected ONN, evaluated as the trainer evaluates it."""
    from optinc_jax.learning.evaluate import predict_values
    from optinc_jax.learning.trainer import load_run

    run = load_run(path)
    scenario = run.scenario
    spec = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    predict = jax.jit(functools.partial(predict_values, run.apply_fn))
    table = np.empty(spec.size, np.int32)
    for start, samples, valid in dataset_chunks(spec, min(_TABLE_CHUNK, spec.size)):
        count = int(np.sum(np.asarray(valid)))
        table[start : start + count] = np.asarray(predict(run.params, samples.inputs))[:count]
    return make_onn_table(
        table, bits=spec.bits, servers=spec.servers, inputs=spec.inputs, source=str(path)
    )


def _table_from_weights(path: Path) -> OnnTable:
    """Table of exported weights, evaluated with the export's float64 NumPy reference."""
    from optinc_jax.learning.export import load_exported, mlp_forward_numpy

    arrays = load_exported(path)
    missing = sorted({"bits", "servers", "inputs"} - set(arrays))
    if missing:
        raise ValueError(f"{path} does not record {missing}; cannot tabulate its ONN")
    spec = make_dataset_spec(int(arrays["bits"]), int(arrays["servers"]), int(arrays["inputs"]))
    place = 4 ** np.arange(spec.symbols, dtype=np.int64)
    table = np.empty(spec.size, np.int32)
    for start, samples, valid in dataset_chunks(spec, min(_TABLE_CHUNK, spec.size)):
        count = int(np.sum(np.asarray(valid)))
        y = mlp_forward_numpy(arrays, np.asarray(samples.inputs)[:count])
        symbols = np.clip(np.round(y), 0, 3).astype(np.int64)  # the receiver
        table[start : start + count] = symbols @ place
    return make_onn_table(
        table, bits=spec.bits, servers=spec.servers, inputs=spec.inputs, source=str(path)
    )


@functools.lru_cache(maxsize=8)
def _cached_table(path: str, stamp: tuple[int, ...]) -> OnnTable:
    del stamp  # part of the cache key only
    resolved = Path(path)
    return _table_from_run(resolved) if resolved.is_dir() else _table_from_weights(resolved)


def _stamp(path: Path) -> tuple[int, ...]:
    """Modification times that change when a run or a weights file is rewritten."""
    candidates = [path, path / "checkpoints", path / "result.json"]
    return tuple(os.stat(p).st_mtime_ns for p in candidates if p.exists())


def onn_lookup_table(source: str | os.PathLike) -> OnnTable:
    """Tabulate a trained ONN on every distinct preprocessed input (cached per path).

    A run directory (written by ``train_onn``) is reloaded with its projected parameters
    and evaluated with JAX exactly as the trainer's exhaustive evaluation does, so the
    table's accuracy equals the run's reported accuracy. An exported ``.npz`` is evaluated
    with the export's float64 NumPy reference forward. Either way each output goes through
    the receiver (``clip(round(y), 0, 3)``) and the reconstruction ``sum_k 4^k y_hat_k``.
    Tables are cached by resolved path and modification time (a retrained run is
    tabulated again).

    Args:
        source: a run directory or an exported weights ``.npz``.

    Returns:
        The :class:`OnnTable` with its measured accuracy.

    Raises:
        ValueError: if ``source`` does not exist or is not a run or an export.
        CheckpointError: if a run directory holds no readable checkpoint.
    """
    path = Path(source).resolve()
    if not path.exists():
        raise ValueError(f"source must be a run directory or an exported .npz, got {source!r}")
    return _cached_table(str(path), _stamp(path))


# ------------------------------------------------------------------------ error models


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[],
    meta_fields=["bits", "servers", "rate", "values", "probabilities", "source"],
)
@dataclasses.dataclass(frozen=True)
class ErrorModel:
    """Statistical errors of an imperfect unit: ``t_hat = t + e`` on a fraction of values.

    Errors are drawn independently per element and independently of the value, as the
    paper injects Table II's errors. A pytree with no arrays (all static), hashable.

    Attributes:
        bits: gradient bit width ``B`` of the unit.
        servers: the unit's server count ``N``.
        rate: probability that a value is wrong, in ``[0, 1]`` (resolved to ``2^-32``).
        values: the possible errors ``e = t_hat - t`` in LSBs (non-zero integers).
        probabilities: the share of each error among the wrong values (sums to 1).
        source: where the model came from.

    Raises:
        ValueError: on inconsistent fields.

    Examples:
        >>> model = ErrorModel(8, 4, rate=0.01, values=(1, -1), probabilities=(0.5, 0.5))
        >>> model.values, model.probabilities
        ((1, -1), (0.5, 0.5))
    """

    bits: int
    servers: int
    rate: float
    values: tuple[int, ...] = ()
    probabilities: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self):
        """Validates the fields (values as given; nothing is renormalised)."""
        num_symbols(self.bits)
        require_int("servers", self.servers, 1)
        require_real("rate", self.rate, low=0.0, high=1.0)
        values = tuple(require_int("every error value", v) for v in self.values)
        if any(v == 0 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"error values must be distinct non-zero integers, got {values}")
        if len(self.probabilities) != len(values):
            raise ValueError(
                f"probabilities must give one share per error value ({len(values)}), got "
                f"{len(self.probabilities)}"
            )
        shares = [
            require_real("every probability", p, low=0.0, high=1.0) for p in self.probabilities
        ]
        if values and abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"probabilities must sum to 1, got {sum(shares)}")
        if self.rate > 0 and not values:
            raise ValueError(f"rate = {self.rate} > 0 needs at least one error value")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "probabilities", tuple(shares))


def _model_from_table_ii(row: TableIIRow, lost_value: int | Sequence[int]) -> ErrorModel:
    lost = [entry for entry in row.errors if entry.value is None]
    if isinstance(lost_value, Sequence):
        if len(lost_value) != len(lost):
            raise ValueError(
                f"lost_value must give one value per lost error value of the row "
                f"{row.approx} ({len(lost)}), got {tuple(lost_value)}"
            )
        substitutes = iter(lost_value)
    else:
        substitutes = iter([lost_value] * len(lost))
    shares: dict[int, float] = {}
    for entry in row.errors:
        value = entry.value if entry.value is not None else next(substitutes)
        value = require_int("lost_value", value)
        if value == 0:
            raise ValueError("lost_value must be a non-zero integer error, got 0")
        shares[value] = shares.get(value, 0.0) + entry.share_percent / 100
    return ErrorModel(
        bits=TABLE_II_BITS,
        servers=TABLE_II_SERVERS,
        rate=1.0 - row.accuracy_percent / 100,
        values=tuple(shares),
        probabilities=tuple(shares.values()),
        source=f"Table II, approx {row.approx}",
    )


def _model_from_record(record: dict, source: str) -> ErrorModel:
    try:
        correct, total = int(record["correct"]), int(record["total"])
        histogram = {int(k): int(v) for k, v in record["error_histogram"].items()}
        bits, servers = int(record["bits"]), int(record["servers"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{source} is not an evaluation record: {error!r}") from None
    invalid = int(record.get("invalid", 0))
    if invalid:
        raise ValueError(
            f"{source}: {invalid} outputs of the network were NaN or infinite (a diverged "
            "network); they have no error value to inject"
        )
    wrong = sum(histogram.values())
    if total < 1 or wrong != total - correct:
        raise ValueError(
            f"{source}: the error histogram counts {wrong} wrong values, but "
            f"total - correct = {total - correct}"
        )
    values = tuple(sorted(histogram))
    return ErrorModel(
        bits=bits,
        servers=servers,
        rate=wrong / total,
        values=values,
        probabilities=tuple(histogram[v] / wrong for v in values) if wrong else (),
        source=source,
    )


def error_model(
    source: "ErrorModel | TableIIRow | dict | str | os.PathLike",
    *,
    lost_value: int | Sequence[int] = 1,
) -> ErrorModel:
    """The :class:`ErrorModel` of a Table II row or of a run's measured error histogram.

    **Table II rows** (16 bits, 4 servers): ``rate = 1 - accuracy``, and each listed error
    value with its relative share. Most of the paper's error values were lost in the text
    extraction (only the shares survived, except ``1024 (100 %)`` and ``12 (3.5 %)``); each
    lost value is replaced by ``lost_value`` LSBs: by default ``+1``, the value of the
    paper's own example ``"1 (90 %)"`` and its "rare errors of small magnitude". Pass a
    sequence to give each lost entry of the row its own value (in the row's order).
    Entries that end up with the same value are merged (their shares added).

    **Measured**: an evaluation record (``result.json`` of a run, or the dict of
    ``evaluation_record``): ``rate = (total - correct) / total`` and the histogram of
    ``t_hat - t`` as the error distribution.

    Args:
        source: an :class:`ErrorModel` (returned as is), a ``TableIIRow`` of
            ``optinc_jax.paper.TABLE_II``, an evaluation record dict, a ``result.json``
            path or a run directory holding one.
        lost_value: replacement for Table II's lost error values (see above).

    Returns:
        The error model.

    Raises:
        ValueError: on an unreadable source, an inconsistent record, or a bad
            ``lost_value``.

    Examples:
        >>> from optinc_jax.paper import TABLE_II
        >>> model = error_model(TABLE_II[3])
        >>> model.values, model.probabilities, round(model.rate, 9)
        ((1,), (1.0,), 0.0001109)
        >>> error_model(TABLE_II[3], lost_value=(1, -1, 2)).values
        (1, -1, 2)
    """
    if isinstance(source, ErrorModel):
        return source
    if isinstance(source, TableIIRow):
        return _model_from_table_ii(source, lost_value)
    if isinstance(source, dict):
        return _model_from_record(source, "the record")
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            path = path / "result.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read an evaluation record from {source!r}: {error}") from None
        return _model_from_record(record, str(path))
    raise ValueError(
        "errors must be an ErrorModel, a Table II row, an evaluation record or a path, "
        f"got {type(source).__name__}"
    )


# ------------------------------------------------------------------------- the collective


class _Config(NamedTuple):
    """Validated options of :func:`pmean` (everything but the axis and the key)."""

    bits: int
    mode: str
    rounding: str
    block_size: int
    table: "OnnTable | CascadeTable | None"
    errors: ErrorModel | None
    cascade: Cascade | None = None


def _check_options(
    bits: int,
    mode: str,
    rounding: str,
    block_size: int,
    table: Any,
    errors: Any,
    key: Any,
    cascade: Any = None,
) -> _Config:
    """Validate the options at the public boundary (before any tracing of data)."""
    num_symbols(bits)
    mode = require_choice("mode", mode, MODES)
    rounding = require_choice("rounding", rounding, ROUNDINGS)
    block_size = require_int("block_size", block_size, 1)
    if cascade is not None:
        if mode != "ideal":
            raise ValueError(
                f"cascade= is used only with mode='ideal' (mode='onn' takes a CascadeTable "
                f"as table=), got mode={mode!r}"
            )
        if not isinstance(cascade, Cascade):
            raise ValueError(f"cascade must be a Cascade (make_cascade), got {cascade!r}")
        if cascade.bits != bits:
            raise ValueError(f"the cascade is of {cascade.bits}-bit units, but bits = {bits}")
        if rounding != "floor":
            raise ValueError(
                f"a cascade of units floors; rounding must be 'floor', got {rounding!r}"
            )
    if mode == "onn":
        if table is None:
            raise ValueError(
                "mode='onn' needs table= (an OnnTable, a CascadeTable or a run/weights path)"
            )
        if not isinstance(table, OnnTable | CascadeTable):
            table = onn_lookup_table(table)
        if table.bits != bits:
            raise ValueError(f"the table is a {table.bits}-bit unit, but bits = {bits}")
        if rounding != "floor":
            raise ValueError(
                "mode='onn' computes the table's function (trained to floor); "
                f"rounding must be 'floor', got {rounding!r}"
            )
    elif table is not None:
        raise ValueError(f"table is used only with mode='onn', got mode={mode!r}")
    if mode == "inject":
        if errors is None:
            raise ValueError("mode='inject' needs errors= (an ErrorModel, Table II row or path)")
        errors = error_model(errors)
        if errors.bits != bits:
            raise ValueError(f"the error model is for {errors.bits}-bit units, but bits = {bits}")
        if key is None:
            raise ValueError("mode='inject' needs a PRNG key=")
    elif errors is not None or key is not None:
        raise ValueError(f"errors and key are used only with mode='inject', got mode={mode!r}")
    return _Config(bits, mode, rounding, block_size, table, errors, cascade)


def _cascade_of(config: _Config) -> Cascade | None:
    """The cascade the codes go through (``None``: one unit)."""
    if isinstance(config.table, CascadeTable):
        return config.table.cascade
    return config.cascade


def _check_servers(config: _Config, servers: int, axis_name) -> None:
    cascade = _cascade_of(config)
    if cascade is not None:
        if servers > cascade.servers:
            raise ValueError(
                f"axis {axis_name!r} has {servers} servers, more than the {cascade.servers} "
                f"inputs of the cascade of fan-ins {cascade.fanins}; supported server counts: "
                f"1 to {cascade.servers}"
            )
        return
    unit = config.table if config.mode == "onn" else config.errors
    if unit is not None and unit.servers != servers:
        raise ValueError(
            f"mode={config.mode!r}: axis {axis_name!r} has {servers} servers, but the unit "
            f"serves N = {unit.servers}; supported server counts: {unit.servers} (larger "
            "counts need the cascade of units; mode='ideal' takes any N >= 1)"
        )


def _gather_invariant(x: jax.Array, axis_name) -> jax.Array:
    """``[N, ...]``: every server's ``x``, typed as replicated (the optical fan-in)."""
    return lax.all_gather(x, axis_name, to="invarying")


def _code_dtype(bits: int) -> np.dtype:
    """Smallest unsigned dtype holding ``B``-bit codes (its ``K`` packed PAM4 symbols)."""
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


def average_codes(total: jax.typing.ArrayLike, servers: int, rounding: str = "floor") -> jax.Array:
    """The ideal unit's output: ``sum u / N`` as an integer, floored or to nearest.

    Args:
        total: ``[...]`` non-negative integer sums ``sum_n u_n``.
        servers: ``N >= 1`` (static).
        rounding: ``"floor"`` (the paper's) or ``"nearest"`` (ties to even).

    Returns:
        ``[...]`` averages, same integer dtype.

    Examples:
        >>> sums = jnp.array([5, 6, 7, 10])  # / 4 = 1.25, 1.5, 1.75, 2.5
        >>> average_codes(sums, 4), average_codes(sums, 4, "nearest")
        (Array([1, 1, 1, 2], dtype=int32), Array([1, 2, 2, 2], dtype=int32))
    """
    total = jnp.asarray(total)
    quotient = total // servers
    if rounding == "floor":
        return quotient
    twice_rest = 2 * (total - quotient * servers)
    up = (twice_rest > servers) | ((twice_rest == servers) & (quotient % 2 == 1))
    return quotient + up.astype(quotient.dtype)


def _table_index(gathered: jax.Array, table: OnnTable) -> jax.Array:
    """Index ``sum_m a_m L^m`` of the preprocessed counts ``a_m = N x_m``, int32."""
    group_bits = 2 * table.symbols_per_input
    mask = 4**table.symbols_per_input - 1
    index = None
    for m in range(table.inputs):  # I inputs (4): a static loop over the unit's inputs
        term = _server_sum((gathered >> (group_bits * m)) & mask) * (table.levels**m)
        index = term if index is None else index + term
    return index


def _inject(t: jax.Array, errors: ErrorModel, key: jax.Array, axis_name, servers: int) -> jax.Array:
    """``clip(t + e, 0, 2^B - 1)`` on a random ``rate`` of the elements, ``e ~ errors``.

    Each element is wrong with probability ``rate`` (a uint32 draw against
    ``round(rate 2^32)``) and, if wrong, gets an error value drawn with the model's shares
    (a float32 uniform draw). The unit draws once for all servers; in the simulation each
    server ``i`` draws for ``1/N`` of the elements with ``fold_in(key, i)`` and the servers
    gather the resulting one-byte codes (simulation machinery, not counted as
    communication), so the draws cost ``1/N`` of a per-element draw on every server.
    """
    threshold = round(errors.rate * 2**32)
    if threshold == 0:
        return t
    share = -(-t.size // servers)
    wrong_key, value_key = jax.random.split(jax.random.fold_in(key, lax.axis_index(axis_name)))
    if threshold >= 2**32:
        wrong = jnp.ones((share,), bool)
    else:
        wrong = jax.random.bits(wrong_key, (share,), jnp.uint32) < np.uint32(threshold)
    count = len(errors.values)
    code_dtype = jnp.uint8 if count < 255 else jnp.int32
    if count == 1:
        code = wrong.astype(code_dtype)  # 0: exact, 1: the error value
    else:
        edges = jnp.asarray(np.cumsum(errors.probabilities)[:-1], jnp.float32)
        draw = jax.random.uniform(value_key, (share,), jnp.float32)
        category = jnp.searchsorted(edges, draw, side="right", method="compare_all")
        code = jnp.where(wrong, category + 1, 0).astype(code_dtype)
    codes = _gather_invariant(code, axis_name).reshape(-1)[: t.size].reshape(t.shape)
    if count == 1:
        error = codes.astype(jnp.int32) * errors.values[0]
    else:
        values = jnp.asarray((0, *errors.values), jnp.int32)
        error = values.at[codes.astype(jnp.int32)].get(mode="promise_in_bounds")
    # The receiver's symbols are in {0..3}: t_hat cannot leave [0, 2^B - 1].
    return jnp.clip(t + error, 0, 2**errors.bits - 1)


def _replicated_key(key: jax.Array, axis_name) -> jax.Array:
    """The first server's key on every server: the unit draws one error per element."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = jax.random.key_data(key) if typed else key
    is_first = lax.axis_index(axis_name) == 0  # varying, so the psum below always applies
    first = lax.psum(jnp.where(is_first, data, jnp.zeros_like(data)), axis_name)
    return jax.random.wrap_key_data(first, impl=jax.random.key_impl(key)) if typed else first


def _server_sum(gathered: jax.Array) -> jax.Array:
    """``sum_n u_n`` of ``[N, ...]`` codes in int32, as ``N`` static adds.

    XLA's reduction over a short leading axis of narrow integers is several times slower
    on CPU than the unrolled adds.
    """
    total = gathered[0].astype(jnp.int32)
    for server in range(1, gathered.shape[0]):  # over the N servers, not over elements
        total = total + gathered[server].astype(jnp.int32)
    return total


def _optinc_group(
    leaves: Sequence[jax.Array],
    axis_name,
    servers: int,
    config: _Config,
    key: jax.Array | None,
) -> tuple[list[jax.Array], int]:
    """OptINC data path for leaves of one dtype; returns the averages and the block count."""
    dtype = leaves[0].dtype
    bs, bits = config.block_size, config.bits
    work = jnp.promote_types(dtype, jnp.float32)  # half precision: quantized in float32
    parts = [to_blocks(leaf.astype(work), bs) for leaf in leaves]
    blocks = jnp.concatenate(parts) if len(parts) > 1 else parts[0]  # [nb, bs]
    shared = lax.pmax(block_exponents(blocks, block_size=bs), axis_name)  # exponent exchange
    u = quantize_block_codes(blocks, shared, bits)  # [nb, bs] in [1, 2^B)
    gathered = _gather_invariant(u.astype(_code_dtype(bits)), axis_name)  # [N, nb, bs]
    cascade = _cascade_of(config)
    if cascade is not None:
        # Unused cascade inputs are zero servers; the cascade outputs floor(sum u / C).
        padded = jnp.concatenate(
            [gathered, jnp.zeros((cascade.servers - servers, *u.shape), gathered.dtype)]
        )
        if config.mode == "onn":
            t = cascade_lookup(config.table, padded)
        else:
            t = cascade_average_codes(cascade, padded)
    elif config.mode == "onn":
        # Indices are in range by construction; the table is small enough for cache as
        # codes (uint8 for 8 bits), and XLA's gather is cheapest on a flat index.
        lookup = config.table.table.astype(_code_dtype(bits))
        index = _table_index(gathered, config.table).reshape(-1)
        t = lookup.at[index].get(mode="promise_in_bounds").reshape(u.shape).astype(jnp.int32)
    else:
        t = average_codes(_server_sum(gathered), servers, config.rounding)
        if config.mode == "inject":
            t = _inject(t, config.errors, key, axis_name, servers)
    averaged = dequantize_block_codes(t, shared, bits, work)
    if cascade is not None and cascade.servers != servers:
        # The code t ~ sum u / C; the servers want the value of the code t C / N:
        # (t C/N - 2^(B-1)) s = (C/N) D(t) + (C/N - 1) D(2^B), with D(t) = (t - 2^(B-1)) s.
        ratio = cascade.servers / servers
        top = dequantize_block_codes(jnp.full((t.shape[0], 1), 2**bits), shared, bits, work)
        averaged = ratio * averaged + (ratio - 1) * top
    averaged = averaged.astype(dtype)
    out, start = [], 0
    for leaf, part in zip(leaves, parts, strict=True):
        stop = start + part.shape[0]
        out.append(averaged[start:stop].reshape(-1)[: leaf.size].reshape(leaf.shape))
        start = stop
    return out, blocks.shape[0]


def _optinc_pmean(tree, axis_name, config: _Config, key) -> tuple[Any, CommStats]:
    leaves, treedef = float_leaves(tree)
    servers = axis_size(axis_name)
    _check_servers(config, servers, axis_name)
    cascade = _cascade_of(config)
    require_sum_fits(servers if cascade is None else cascade.servers, config.bits)
    if config.mode == "inject":
        key = _replicated_key(jnp.asarray(key), axis_name)
    out: list[Any] = [None] * len(leaves)
    payload_bits = exponent_bits = 0
    for group, (dtype, indices) in enumerate(dtype_groups(leaves).items()):
        members = [leaves[i] for i in indices if leaves[i].size]
        for i in indices:
            if not leaves[i].size:  # nothing to send; a fresh (replicated) empty array
                out[i] = jnp.zeros(leaves[i].shape, leaves[i].dtype)
        if not members:
            continue
        group_key = None if key is None else jax.random.fold_in(key, group)
        averaged, blocks = _optinc_group(members, axis_name, servers, config, group_key)
        for i, value in zip([i for i in indices if leaves[i].size], averaged, strict=True):
            out[i] = value
        payload_bits += blocks * config.block_size * config.bits
        exponent_bits += blocks * np.finfo(dtype).nexp
    elements = sum(leaf.size for leaf in leaves)
    stats = CommStats.from_bits(
        "optinc",
        servers,
        elements,
        gradient_bits=elements * config.bits,
        payload_bits_sent=payload_bits,
        payload_bits_received=payload_bits,
        exponent_bits_sent=exponent_bits,
        exponent_bits_received=exponent_bits,
        rounds=1,
    )
    return jax.tree_util.tree_unflatten(treedef, out), stats


def pmean_with_stats(
    tree: Any,
    axis_name: Any,
    *,
    bits: int = 8,
    mode: str = "ideal",
    rounding: str = "floor",
    block_size: int = DEFAULT_BLOCK_SIZE,
    table: "OnnTable | str | os.PathLike | None" = None,
    errors: Any = None,
    key: jax.Array | None = None,
    cascade: Cascade | None = None,
) -> tuple[Any, CommStats]:
    """:func:`pmean` and the data each server sends and receives.

    The :class:`CommStats` holds static Python ints, known while tracing; read them in the
    traced function (e.g. append them to a list), they are the same on every call with the
    same shapes.

    Args:
        tree: as :func:`pmean`.
        axis_name: as :func:`pmean`.
        bits: as :func:`pmean`.
        mode: as :func:`pmean`.
        rounding: as :func:`pmean`.
        block_size: as :func:`pmean`.
        table: as :func:`pmean`.
        errors: as :func:`pmean`.
        key: as :func:`pmean`.
        cascade: as :func:`pmean`.

    Returns:
        ``(averaged tree, CommStats)``.

    Raises:
        ValueError: as :func:`pmean`.

    Examples:
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
        >>> counted = []
        >>> def average(g):
        ...     out, stats = pmean_with_stats(g, "data")
        ...     counted.append(stats)
        ...     return out
        >>> _ = jax.shard_map(average, mesh=mesh, in_specs=P("data"), out_specs=P())(
        ...     jnp.ones(4 * 1024))
        >>> counted[0].payload_bytes_sent, counted[0].exponent_bytes_sent, counted[0].sent_ratio
        (1024, 4, 1.0)
    """
    config = _check_options(bits, mode, rounding, block_size, table, errors, key, cascade)
    return _optinc_pmean(tree, axis_name, config, key)


def pmean(
    tree: Any,
    axis_name: Any,
    *,
    bits: int = 8,
    mode: str = "ideal",
    rounding: str = "floor",
    block_size: int = DEFAULT_BLOCK_SIZE,
    table: "OnnTable | str | os.PathLike | None" = None,
    errors: Any = None,
    key: jax.Array | None = None,
    cascade: Cascade | None = None,
) -> Any:
    """Average a pytree over a named axis through OptINC; a drop-in for ``lax.pmean``.

    Call it inside ``jax.shard_map`` or ``jax.pmap`` with the name of the axis the servers
    (data-parallel replicas) span; see the module docstring for the data path. The result
    is the same on every server and typed as replicated (``out_specs=P()`` works).

    Args:
        tree: pytree of real floating arrays of any shape (one server's gradient). Each
            dtype's leaves are quantized in one fused buffer, each leaf padded to whole
            blocks (block boundaries never cross leaves); float16 and bfloat16 leaves are
            quantized and dequantized in float32 (an exact upcast) and cast back.
        axis_name: the mapped axis (a name or a tuple of names) whose ``N`` members are the
            servers.
        bits: gradient bit width ``B``; even, in ``[2, 30]``, with ``N (2^B - 1)`` within
            int32.
        mode: ``"ideal"`` (exact ``floor(sum u / N)``, any ``N >= 1``; through perfect
            units of ``cascade`` if given), ``"onn"`` (the tabulated ONN or cascade,
            ``table`` required) or ``"inject"`` (``errors`` and ``key`` required).
        rounding: ``"floor"`` (the paper's) or ``"nearest"`` (ties to even; unbiased);
            ``"onn"`` takes only ``"floor"``, the function the table was trained for.
        block_size: elements per quantization block (one shared exponent each).
        table: an :class:`OnnTable`, or a run directory / exported ``.npz`` to tabulate
            with :func:`onn_lookup_table` (cached), or a
            :class:`~optinc_jax.network.cascade.CascadeTable` (a cascade's trained levels,
            :func:`~optinc_jax.network.cascade.cascade_table`) serving up to its capacity
            ``C`` servers (module docstring).
        errors: an :class:`ErrorModel` or anything :func:`error_model` takes.
        key: PRNG key of the error draws (``"inject"``); the first server's key is used
            on all servers, so every server sees the same errors.
        cascade: ``mode="ideal"`` only: a :class:`~optinc_jax.network.cascade.Cascade`
            of perfect units serving up to its capacity ``C >= N`` servers (``"exact"``:
            ``floor(sum u / C)``; ``"naive"``: the paper's eq. 9, a floor at every level),
            its code read as ``t C / N`` (module docstring).

    Returns:
        The averaged pytree, leaves of the input shapes and dtypes.

    Raises:
        ValueError: on a bad ``bits``, ``mode``, ``rounding`` or ``block_size``, a missing
            or superfluous ``table`` / ``errors`` / ``key``, a unit whose bit width or
            server count differs from ``bits`` or the axis size, or a non-float leaf.

    Examples:
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
        >>> g = jnp.array([1.0, 0.5, 0.25, 0.0, 1.0, 0.0, 0.0, 0.0])  # two values per server
        >>> jax.shard_map(lambda x: pmean(x, "data"), mesh=mesh,
        ...               in_specs=P("data"), out_specs=P())(g)
        Array([0.5669291 , 0.12598425], dtype=float32)

        The exact mean is ``[0.5625, 0.125]``; with 8 bits one step is ``2 / 127`` here.
    """
    config = _check_options(bits, mode, rounding, block_size, table, errors, key, cascade)
    return _optinc_pmean(tree, axis_name, config, key)[0]


# --------------------------------------------------------------------------- optax


class OptincAllReduceState(NamedTuple):
    """State of :func:`optinc_allreduce`.

    Attributes:
        count: ``[]`` int32 number of updates averaged so far.
        key: PRNG key of the error draws (``mode="inject"``), else ``None``.
    """

    count: jax.Array
    key: jax.Array | None


def optinc_allreduce(
    axis_name: Any, *, key: jax.Array | None = None, **pmean_kwargs: Any
) -> optax.GradientTransformation:
    """An optax transformation that averages the updates over the servers with OptINC.

    Put it first in the chain of a data-parallel ``shard_map`` step instead of calling
    ``lax.pmean`` on the gradients: the rest of the step is unchanged.
    With ``mode="inject"`` the state holds ``key`` and step ``i`` draws its errors with
    ``fold_in(key, i)``.

    Args:
        axis_name: the data-parallel axis (as :func:`pmean`).
        key: PRNG key of the error draws; required for ``mode="inject"`` only.
        **pmean_kwargs: ``bits``, ``mode``, ``rounding``, ``block_size``, ``table``,
            ``errors``, ``cascade`` of :func:`pmean` (validated here, once).

    Returns:
        ``optax.GradientTransformation`` whose ``update`` must run inside the mapped
        function (it calls :func:`pmean` on the updates).

    Raises:
        ValueError: on invalid :func:`pmean` options.

    Examples:
        >>> import optax
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
        >>> tx = optax.chain(optinc_allreduce("data"), optax.sgd(0.2))
        >>> def step(w, opt_state, x, y):
        ...     grads = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        ...     updates, opt_state = tx.update(grads, opt_state)  # was: lax.pmean(grads, ...)
        ...     return optax.apply_updates(w, updates), opt_state
        >>> step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P("data"),
        ...     P("data")), out_specs=(P(), P())))
        >>> x = jax.random.normal(jax.random.key(0), (64, 3))
        >>> w, opt_state = jnp.zeros(3), tx.init(jnp.zeros(3))
        >>> for _ in range(50):
        ...     w, opt_state = step(w, opt_state, x, x @ jnp.array([1.0, -2.0, 0.5]))
        >>> np.round(np.asarray(w), 1)
        array([ 1. , -2. ,  0.5], dtype=float32)
    """
    options = dict(pmean_kwargs)
    known = {"bits", "mode", "rounding", "block_size", "table", "errors", "cascade"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"optinc_allreduce got unknown pmean options {unknown}")
    mode = options.get("mode", "ideal")
    config = _check_options(
        options.get("bits", 8),
        mode,
        options.get("rounding", "floor"),
        options.get("block_size", DEFAULT_BLOCK_SIZE),
        options.get("table"),
        options.get("errors"),
        key if mode == "inject" else None,
        options.get("cascade"),
    )
    if mode != "inject" and key is not None:
        raise ValueError(f"key is used only with mode='inject', got mode={mode!r}")

    def init_fn(params):
        del params
        return OptincAllReduceState(jnp.zeros([], jnp.int32), key)

    def update_fn(updates, state, params=None):
        del params
        step_key = None
        if config.mode == "inject":
            step_key = jax.random.fold_in(state.key, state.count)
        averaged, _ = _optinc_pmean(updates, axis_name, config, step_key)
        count = optax.safe_int32_increment(state.count)
        return averaged, OptincAllReduceState(count, state.key)

    return optax.GradientTransformation(init_fn, update_fn)
