"""Exhaustive training sets of the ONN: every distinct preprocessed input and its target.

With ``r = K / I`` symbols per input, each ONN input ``x_m`` takes ``L = N (4^r - 1) + 1``
values ``a_m / N`` with ``a_m = N x_m`` in ``[0, L)``, and every such grid point is reached
by some combination of server values (SPEC section 2). The set has ``S = L^I`` samples.
Sample ``i`` in ``[0, S)`` has the mixed-radix digits ``a_m`` of ``i`` in base ``L``
(``m = 0`` least significant), inputs ``x_m = a_m / N`` (in float32 as ``a_m`` times the
rounded reciprocal of ``N``, bitwise what :func:`optinc_jax.encoding.units.preprocess` gives) and
target

    ``t = floor((sum_m (4^r)^m a_m) / N)``,

because ``sum_n u_n = sum_m (4^r)^m a_m`` exactly. Samples are built from the index grid on
device in int32, never by enumerating the ``(2^B)^N`` server combinations; only
:func:`brute_force_dataset` does that, to check the grid on small cases.

**Pluggable datasets.** The trainer and the exhaustive evaluation accept any object of the
small :class:`Dataset` protocol: a ``size``, the output bit width ``bits`` and a jittable
``samples(indices) -> Samples``. :class:`DatasetSpec`, the paper's grid, is one
implementation; the cascade's level datasets and a user's own function are others
(:class:`FunctionDataset` wraps a plain function).
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.pam4 import encode_pam4, num_symbols
from optinc_jax.encoding.units import grid_inputs, preprocess, quantized_average
from optinc_jax.validation import require_in_range, require_int, require_integer_dtype

INT32_MAX = 2**31 - 1
MAX_EXHAUSTIVE_SIZE = 2**26
"""Largest set :func:`exhaustive_dataset` builds at once; larger ones go by chunks."""
MAX_BRUTE_FORCE_COMBINATIONS = 2**20
"""Largest number of server combinations :func:`brute_force_dataset` enumerates."""


class Samples(NamedTuple):
    """A batch of ONN training samples.

    Attributes:
      inputs: ``[n, I]`` float32 preprocessed inputs ``x``.
      target: ``[n]`` int32 targets ``t``.
      target_symbols: ``[n, K]`` int32 PAM4 symbols of ``t``, least significant first.
    """

    inputs: jax.Array
    target: jax.Array
    target_symbols: jax.Array


class Dataset(Protocol):
    """What the trainer and the exhaustive evaluation need of a dataset.

    An implementation must be hashable and compare by value (a ``NamedTuple`` or a frozen
    dataclass): it is a static argument of the jitted training epoch and evaluation chunk,
    so an equal dataset reuses their compilation.

    Attributes:
      size: number of samples ``S``; sample indices are ``0 .. S - 1`` and must fit int32.
      bits: bit width ``B`` of the targets: ``target`` lies in ``[0, 2^B)`` and the ONN has
        ``K = B / 2`` outputs.
    """

    @property
    def size(self) -> int:
        """Number of samples."""
        ...

    @property
    def bits(self) -> int:
        """Bit width of the targets."""
        ...

    def samples(self, indices: jax.Array) -> "Samples":
        """The samples at ``indices [n]`` (int32, in ``[0, size)``); jittable, no checks."""
        ...


class DatasetSpec(NamedTuple):
    """Which exhaustive set: hashable, so it can be a static ``jax.jit`` argument.

    Build it with :func:`make_dataset_spec`, which validates the fields.

    Attributes:
      bits: bit width ``B`` of the gradient values.
      servers: number of servers ``N``.
      inputs: number of ONN inputs ``I``.
    """

    bits: int
    servers: int
    inputs: int = 4

    @property
    def symbols(self) -> int:
        """PAM4 symbols per value, ``K = B / 2`` (ONN outputs)."""
        return self.bits // 2

    @property
    def symbols_per_input(self) -> int:
        """Symbols grouped into one ONN input, ``r = K / I``."""
        return self.symbols // self.inputs

    @property
    def levels(self) -> int:
        """Values per ONN input, ``L = N (4^r - 1) + 1``."""
        return self.servers * (4**self.symbols_per_input - 1) + 1

    @property
    def size(self) -> int:
        """Number of samples, ``S = L^I``."""
        return self.levels**self.inputs

    def samples(self, indices: jax.Array) -> "Samples":
        """Samples at ``indices [n]`` (int32, assumed in ``[0, S)``): the :class:`Dataset` API.

        Jittable and unvalidated (use :func:`dataset_samples` for checked access).
        """
        return _samples(self, jnp.asarray(indices).astype(jnp.int32))


@dataclasses.dataclass(frozen=True)
class FunctionDataset:
    """A :class:`Dataset` from a plain function of the sample indices.

    Attributes:
      size: number of samples.
      bits: bit width of the targets (``K = bits / 2`` symbols).
      function: jittable ``function(indices [n] int32) -> Samples``. It is compared by
        identity: keep one function object to reuse compilations.

    Examples:
      >>> def parity(indices):
      ...     target = indices % 4
      ...     inputs = indices[:, None].astype(jnp.float32)
      ...     return Samples(inputs, target, encode_pam4(target, bits=2))
      >>> FunctionDataset(size=8, bits=2, function=parity).samples(jnp.arange(3)).target
      Array([0, 1, 2], dtype=int32)
    """

    size: int
    bits: int
    function: Callable[[jax.Array], "Samples"]

    def __post_init__(self):
        """Validates the fields."""
        require_int("size", self.size, 1, INT32_MAX)
        num_symbols(self.bits)
        if not callable(self.function):
            raise ValueError(f"function must be callable, got {self.function!r}")

    def samples(self, indices: jax.Array) -> "Samples":
        """``function(indices)``; see :class:`Dataset`."""
        return self.function(jnp.asarray(indices).astype(jnp.int32))


def make_dataset_spec(bits: int, servers: int, inputs: int = 4) -> DatasetSpec:
    """Validated :class:`DatasetSpec`.

    Args:
      bits: bit width ``B``; even, in ``[2, 30]``.
      servers: number of servers ``N >= 1``.
      inputs: number of ONN inputs ``I >= 1``, dividing ``K = B / 2``.

    Returns:
      The spec.

    Raises:
      ValueError: on odd or out-of-range ``bits``, ``servers < 1``, ``inputs < 1``,
        ``K % inputs != 0``, or a set whose indices ``S - 1`` or largest weighted sum
        ``N (2^B - 1)`` do not fit int32.

    Examples:
      >>> spec = make_dataset_spec(16, 4)
      >>> spec.symbols_per_input, spec.levels, spec.size
      (2, 61, 13845841)
    """
    symbols = num_symbols(bits)
    servers = require_int("servers", servers, 1)
    inputs = require_int("inputs", inputs, 1)
    if symbols % inputs:
        raise ValueError(
            f"inputs = {inputs} must divide the number of symbols K = {symbols} (bits = {bits})"
        )
    spec = DatasetSpec(int(bits), servers, inputs)
    if spec.size - 1 > INT32_MAX or servers * (2**bits - 1) > INT32_MAX:
        raise ValueError(
            f"the dataset for bits = {bits}, servers = {servers}, inputs = {inputs} overflows "
            f"int32: {spec.size} samples, largest sum N (2^B - 1) = {servers * (2**bits - 1)}"
        )
    return spec


def _sample(spec: DatasetSpec, index: jax.Array) -> Samples:
    """Sample ``index`` (a scalar int32, assumed in ``[0, S)``) of the set ``spec``."""
    radix = np.array([spec.levels**m for m in range(spec.inputs)], np.int32)
    weights = np.array([4 ** (spec.symbols_per_input * m) for m in range(spec.inputs)], np.int32)
    digits = (index // radix) % spec.levels  # a_m = N x_m
    target = jnp.sum(digits * weights) // spec.servers
    return Samples(
        inputs=grid_inputs(digits, spec.servers),
        target=target,
        target_symbols=encode_pam4(target, bits=spec.bits),
    )


@functools.partial(jax.jit, static_argnames="spec")
def _samples(spec: DatasetSpec, indices: jax.Array) -> Samples:
    """Jitted batch of samples at ``indices`` (``[n]`` int32, assumed in range)."""
    return jax.vmap(functools.partial(_sample, spec))(indices)


def dataset_samples(spec: Dataset, indices: jax.typing.ArrayLike) -> Samples:
    """Samples of a dataset at the given linear indices, checked.

    Jittable (with ``spec`` static); inside ``jax.jit`` the index range is the caller's
    responsibility.

    Args:
      spec: any :class:`Dataset`; a :class:`DatasetSpec` is validated again.
      indices: ``[n]`` integer indices in ``[0, S)`` (checked when concrete).

    Returns:
      :class:`Samples` with ``inputs [n, I]``, ``target [n]``, ``target_symbols [n, K]``.

    Raises:
      ValueError: on an invalid ``spec``, ``indices`` that are not a 1-D integer array, or
        (concrete) indices outside ``[0, S)``.

    Examples:
      >>> spec = make_dataset_spec(8, 4)
      >>> batch = dataset_samples(spec, jnp.array([0, spec.size - 1]))
      >>> batch.inputs
      Array([[0., 0., 0., 0.],
             [3., 3., 3., 3.]], dtype=float32)
      >>> batch.target
      Array([  0, 255], dtype=int32)
    """
    if isinstance(spec, DatasetSpec):
        spec = make_dataset_spec(*spec)
    require_in_range("indices", indices, 0, spec.size)
    indices = jnp.asarray(indices)
    require_integer_dtype("indices", indices)
    if indices.ndim != 1:
        raise ValueError(f"indices must have shape [n], got {indices.shape}")
    return spec.samples(indices.astype(jnp.int32))


def exhaustive_dataset(bits: int, servers: int, inputs: int = 4) -> Samples:
    """The whole exhaustive set, ordered by linear index.

    Args:
      bits: bit width ``B``; even, in ``[2, 30]``.
      servers: number of servers ``N >= 1``.
      inputs: number of ONN inputs ``I``, dividing ``K = B / 2``.

    Returns:
      :class:`Samples` with ``S = (N (4^r - 1) + 1)^I`` rows.

    Raises:
      ValueError: on an invalid spec (:func:`make_dataset_spec`), or ``S > 2^26``: build
        such sets with :func:`dataset_chunks`.

    Examples:
      >>> exhaustive_dataset(8, 4).target.shape
      (28561,)
    """
    spec = make_dataset_spec(bits, servers, inputs)
    if spec.size > MAX_EXHAUSTIVE_SIZE:
        raise ValueError(
            f"the exhaustive set for {spec} has {spec.size} samples, more than "
            f"{MAX_EXHAUSTIVE_SIZE}; iterate over dataset_chunks(spec, chunk_size) instead"
        )
    return _samples(spec, jnp.arange(spec.size, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnames=("spec", "chunk_size"))
def _chunk(spec: DatasetSpec, start: jax.Array, chunk_size: int) -> tuple[Samples, jax.Array]:
    """Jitted core of :func:`dataset_chunk`; ``start`` is traced, so it compiles once."""
    indices = start + jnp.arange(chunk_size, dtype=jnp.int32)
    valid = indices < spec.size
    samples = jax.vmap(functools.partial(_sample, spec))(jnp.where(valid, indices, 0))
    return samples, valid


def dataset_chunk(
    spec: DatasetSpec, start: jax.typing.ArrayLike, chunk_size: int
) -> tuple[Samples, jax.Array]:
    """A fixed-shape chunk ``[start, start + chunk_size)`` of the set, masked past ``S``.

    The chunk shape depends only on ``chunk_size``, so all chunks share one compilation.
    Rows at indices ``>= S`` hold sample 0 and are marked invalid.

    Args:
      spec: the set, from :func:`make_dataset_spec`.
      start: first index, in ``[0, S)`` (checked when concrete).
      chunk_size: rows per chunk, ``>= 1``.

    Returns:
      ``(samples, valid)``: :class:`Samples` with ``chunk_size`` rows and a ``[chunk_size]``
      bool mask of the rows inside the set.

    Raises:
      ValueError: on an invalid ``spec`` or ``chunk_size``, (concrete) ``start`` outside
        ``[0, S)``, or chunk indices that would overflow int32.

    Examples:
      >>> samples, valid = dataset_chunk(make_dataset_spec(2, 1, 1), 2, 3)
      >>> samples.target, valid
      (Array([2, 3, 0], dtype=int32), Array([ True,  True, False], dtype=bool))
    """
    spec = make_dataset_spec(*spec)
    chunk_size = require_int("chunk_size", chunk_size, 1)
    if spec.size - 2 + chunk_size > INT32_MAX:
        raise ValueError(
            f"chunk_size = {chunk_size} would overflow int32 indices for {spec.size} samples"
        )
    require_in_range("start", start, 0, spec.size)
    start = jnp.asarray(start)
    require_integer_dtype("start", start)
    if start.ndim != 0:
        raise ValueError(f"start must be a scalar, got shape {start.shape}")
    return _chunk(spec, start.astype(jnp.int32), chunk_size)


def dataset_chunks(spec: DatasetSpec, chunk_size: int) -> Iterator[tuple[int, Samples, jax.Array]]:
    """Iterate over the whole set in fixed-shape chunks (see :func:`dataset_chunk`).

    Args:
      spec: the set, from :func:`make_dataset_spec`.
      chunk_size: rows per chunk, ``>= 1``.

    Returns:
      An iterator of ``(start, samples, valid)`` for ``start = 0, chunk_size, ... < S``.

    Raises:
      ValueError: on an invalid ``spec`` or ``chunk_size`` (checked before iterating).

    Examples:
      >>> [int(valid.sum()) for _, _, valid in dataset_chunks(make_dataset_spec(8, 1), 100)]
      [100, 100, 56]
    """
    spec = make_dataset_spec(*spec)
    chunk_size = require_int("chunk_size", chunk_size, 1)
    return (
        (start, *dataset_chunk(spec, start, chunk_size))
        for start in range(0, spec.size, chunk_size)
    )


@functools.partial(jax.jit, static_argnames=("bits", "inputs"))
def _brute_force_pairs(
    u: jax.Array, bits: int, inputs: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x [C, I]``, ``t [C]`` and ``t``'s symbols ``[C, K]`` of server values ``u [N, C]``."""
    x = jax.vmap(functools.partial(preprocess, inputs=inputs), in_axes=1)(encode_pam4(u, bits=bits))
    target = quantized_average(u)
    return x, target, encode_pam4(target, bits=bits)


def brute_force_dataset(bits: int, servers: int, inputs: int = 4) -> Samples:
    """Distinct ``(x, t)`` pairs over all ``(2^B)^N`` server combinations (small cases only).

    Every combination of server values ``u`` is PAM4-encoded, preprocessed with
    :func:`optinc_jax.encoding.units.preprocess` and given the target
    :func:`optinc_jax.encoding.units.quantized_average`; the distinct pairs are returned in
    the order of the grid index ``sum_m a_m L^m`` (``a_m = N x_m``). If ``t`` is a function
    of ``x`` and every grid point is reached, the result equals :func:`exhaustive_dataset`.

    Args:
      bits: bit width ``B``; even, in ``[2, 30]``.
      servers: number of servers ``N >= 1``.
      inputs: number of ONN inputs ``I``, dividing ``K = B / 2``.

    Returns:
      :class:`Samples` of NumPy arrays, one row per distinct ``(x, t)`` pair.

    Raises:
      ValueError: on an invalid spec, or more than ``2^20`` combinations.

    Examples:
      >>> brute_force_dataset(2, 2, 1).target
      array([0, 0, 1, 1, 2, 2, 3], dtype=int32)
    """
    spec = make_dataset_spec(bits, servers, inputs)
    combinations = 2 ** (bits * servers)
    if combinations > MAX_BRUTE_FORCE_COMBINATIONS:
        raise ValueError(
            f"brute force over (2^{bits})^{servers} = {combinations} server combinations "
            f"exceeds {MAX_BRUTE_FORCE_COMBINATIONS}"
        )
    u = np.indices((2**bits,) * servers, dtype=np.int32).reshape(servers, -1)  # [N, C]
    x, target, target_symbols = map(np.asarray, _brute_force_pairs(u, bits, inputs))
    counts = np.rint(x * servers).astype(np.int64)  # a_m = N x_m
    grid_index = counts @ (spec.levels ** np.arange(inputs, dtype=np.int64))
    _, first = np.unique(np.stack([grid_index, target], axis=1), axis=0, return_index=True)
    first = first[np.lexsort((target[first], grid_index[first]))]
    return Samples(
        inputs=x[first],
        target=target[first],
        target_symbols=target_symbols[first],
    )
