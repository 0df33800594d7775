"""Exhaustive training sets of the OptINC units of a cascade (paper section III-C, eq. 8-10).

A cascade of ``L`` levels has fan-ins ``(N_1, ..., N_L)``: a level-``l`` unit averages the
outputs of ``N_l`` level-``(l - 1)`` units (level 0 are the servers). Write
``P_l = N_1 ... N_l`` (``P_0 = 1``) for the servers under one level-``l`` unit. The
*exact* cascade (the paper's fix of eq. 9) keeps every discarded remainder: a level-``l``
unit over servers with the sum ``S`` delivers the exact value ``S / P_l`` as ``K`` channels
whose least significant one is analog,

    ``c_0 = t_0 + rho / P_l``,  ``c_k = t_k`` (``k >= 1``),

with ``t = floor(S / P_l)`` (PAM4 symbols ``t_k``) and ``rho = S mod P_l``. The next
level's preprocessing averages ``N_{l+1}`` such children channel by channel exactly as the
paper's preprocessing unit averages servers, so its lowest input has resolution
``1 / P_{l+1}`` and ``sum_m 4^(r m) x_m = S' / P_{l+1}`` holds exactly: no information is
lost at any level, and the last level outputs ``floor(sum u / P_L)`` (eq. 8).

**Level-``l`` inputs** (``r`` symbols per input as in :mod:`optinc_jax.encoding.dataset`):
``x_0 = a_0 / P_l`` with ``a_0`` in ``[0, N_l (4^r P_{l-1} - 1)]``, and ``x_m = a_m / N_l``
with ``a_m`` in ``[0, N_l (4^r - 1)]`` for ``m >= 1``. The set is the full grid of these
``L_0 L_1^(I-1)`` points (``L_0 = N_l (4^r P_{l-1} - 1) + 1``, ``L_1 = N_l (4^r - 1) + 1``),
built on device from the int32 index grid like
:class:`~optinc_jax.encoding.dataset.DatasetSpec`, with the exact sum
``S = a_0 + P_{l-1} sum_{m>=1} 4^(r m) a_m`` and the targets computed from it in integers.
Level 1 has the paper's grid inputs; from level 2 on a few grid points are *unreachable*
(a child at the top of its range has a low digit of at most ``(4^r - 1) P_{l-1}``):
:func:`reachable_inputs` marks them (8 bits, 4 x 4: 105 of 134,017). They stay in the
training set, where their targets are still well defined integers in range; the
exactness checks are over the reachable points.

**Outputs.** The last level outputs the ``K`` symbols of ``t = floor(S / P_L)``. An
intermediate level outputs ``e = ceil(log4 P_l)`` base-4 digits of the remainder ``rho``
(least significant first) followed by the ``K`` symbols of ``t``: target
``rho + 4^e t``, ``2 (K + e)`` bits, every output a plain PAM4 level. A passive combiner
(or the next preprocessing unit's weights) merges them into the analog channel
``c_0 = t_0 + rho / P_l``. Differs from the paper, which trains one ONN output to carry
``c_0`` directly: the PAM4 remainder digits keep every ONN output on the four PAM4 levels,
so the trainer's exhaustive receiver-based accuracy certifies the unit exactly and a
standard PAM4 receiver can regenerate it (:mod:`optinc_jax.network.cascade`).

**Padded inputs.** The trainer's ONN needs its input count to divide its output count
(:func:`~optinc_jax.scenarios.make_scenario`); an intermediate level's ``K + e`` outputs
usually break that (8 bits: 5 outputs, 4 inputs), so such a level has
:attr:`CascadeLevelDataset.onn_inputs` ``>= I`` inputs, the extra ones unused ports held
at zero (the paper's own rule for unused inputs).
"""

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.dataset import INT32_MAX, Samples
from optinc_jax.encoding.pam4 import encode_pam4, num_symbols
from optinc_jax.encoding.units import grid_inputs
from optinc_jax.validation import require_int

__all__ = [
    "CascadeLevelDataset",
    "brute_force_level_inputs",
    "make_level_dataset",
    "reachable_inputs",
    "remainder_symbols",
]

MAX_BRUTE_FORCE_CHILDREN = 2**22
"""Largest number of children-value combinations :func:`brute_force_level_inputs` visits."""


def remainder_symbols(scale: int) -> int:
    """Base-4 digits needed for a remainder in ``[0, scale)``: ``ceil(log4 scale)``.

    Args:
        scale: ``P_l >= 1``, the servers under one unit.

    Returns:
        The smallest ``e`` with ``4^e >= scale`` (0 for ``scale = 1``).

    Examples:
        >>> [remainder_symbols(p) for p in (1, 2, 4, 5, 16, 64)]
        [0, 1, 1, 2, 2, 3]
    """
    scale = require_int("scale", scale, 1)
    e = 0
    while 4**e < scale:
        e += 1
    return e


class CascadeLevelDataset(NamedTuple):
    """The exact-cascade training set of one level (a hashable :class:`Dataset`).

    Build it with :func:`make_level_dataset`, which validates the fields.

    Attributes:
        value_bits: bit width ``B`` of the servers' values.
        fanins: ``(N_1, ..., N_l)``: the fan-ins of this level and every level below it.
        inputs: data inputs ``I`` of the ONN (dividing ``K = B / 2``).
        final: whether this is the last level (outputs ``floor(S / P_l)``) or an
            intermediate one (outputs the remainder digits and ``floor(S / P_l)``).
    """

    value_bits: int
    fanins: tuple[int, ...]
    inputs: int = 4
    final: bool = True

    @property
    def level(self) -> int:
        """1-based level ``l``."""
        return len(self.fanins)

    @property
    def unit_servers(self) -> int:
        """Fan-in ``N_l`` of this level."""
        return self.fanins[-1]

    @property
    def child_scale(self) -> int:
        """``P_{l-1}``: servers under one child (1 at level 1)."""
        return math.prod(self.fanins[:-1])

    @property
    def scale(self) -> int:
        """``P_l``: servers under one unit of this level."""
        return math.prod(self.fanins)

    @property
    def symbols(self) -> int:
        """``K = B / 2``: PAM4 symbols of a value."""
        return self.value_bits // 2

    @property
    def symbols_per_input(self) -> int:
        """``r = K / I``."""
        return self.symbols // self.inputs

    @property
    def remainder_symbols(self) -> int:
        """``e``: remainder digits output (0 at the last level)."""
        return 0 if self.final else remainder_symbols(self.scale)

    @property
    def output_symbols(self) -> int:
        """ONN outputs, ``K + e``."""
        return self.symbols + self.remainder_symbols

    @property
    def bits(self) -> int:
        """Target bit width, ``2 (K + e)`` (the :class:`Dataset` API)."""
        return 2 * self.output_symbols

    @property
    def onn_inputs(self) -> int:
        """ONN inputs: ``(K + e) / r`` if whole and ``>= I``, else a divisor of ``K + e``.

        The divisor is the smallest one ``>= I``. The first choice keeps the trainer's
        input normalization (it assumes outputs / inputs symbols per input) equal to the
        data's ``r``.
        """
        r = self.symbols_per_input
        if self.output_symbols % r == 0 and self.output_symbols // r >= self.inputs:
            return self.output_symbols // r
        return next(
            d for d in range(self.inputs, self.output_symbols + 1) if self.output_symbols % d == 0
        )

    @property
    def low_levels(self) -> int:
        """``L_0 = N_l (4^r P_{l-1} - 1) + 1``: values of ``a_0``."""
        return self.unit_servers * (4**self.symbols_per_input * self.child_scale - 1) + 1

    @property
    def levels(self) -> int:
        """``L_1 = N_l (4^r - 1) + 1``: values of ``a_m``, ``m >= 1``."""
        return self.unit_servers * (4**self.symbols_per_input - 1) + 1

    @property
    def size(self) -> int:
        """Number of samples, ``L_0 L_1^(I - 1)``."""
        return self.low_levels * self.levels ** (self.inputs - 1)

    def samples(self, indices: jax.Array) -> Samples:
        """Samples at ``indices [n]`` (int32, assumed in ``[0, size)``); jittable, unchecked."""
        return _level_samples(self, jnp.asarray(indices).astype(jnp.int32))


def make_level_dataset(
    bits: int, fanins: tuple[int, ...], *, inputs: int = 4, final: bool = True
) -> CascadeLevelDataset:
    """Validated :class:`CascadeLevelDataset`.

    Args:
        bits: bit width ``B`` of the servers' values; even, in ``[2, 30]``.
        fanins: ``(N_1, ..., N_l)``, each ``>= 1``: this level's fan-in last.
        inputs: ONN data inputs ``I``, dividing ``K = B / 2``.
        final: whether the level is the cascade's last.

    Returns:
        The dataset.

    Raises:
        ValueError: on an invalid field, or a set whose indices or largest exact sum
            ``P_l 4^K`` overflow int32.

    Examples:
        >>> level2 = make_level_dataset(8, (4, 4))
        >>> level2.low_levels, level2.levels, level2.size
        (61, 13, 134017)
        >>> level1 = make_level_dataset(8, (4,), final=False)
        >>> level1.output_symbols, level1.onn_inputs, level1.size
        (5, 5, 28561)
    """
    symbols = num_symbols(bits)
    inputs = require_int("inputs", inputs, 1)
    if symbols % inputs:
        raise ValueError(f"inputs = {inputs} must divide the K = {symbols} symbols of {bits} bits")
    if isinstance(fanins, int) or not fanins:
        raise ValueError(f"fanins must be a non-empty sequence of fan-ins, got {fanins!r}")
    fanins = tuple(require_int("every fan-in", n, 1) for n in fanins)
    if not isinstance(final, bool):
        raise ValueError(f"final must be a bool, got {final!r}")
    dataset = CascadeLevelDataset(int(bits), fanins, inputs, final)
    largest = dataset.scale * 4**symbols * 4**dataset.remainder_symbols
    if dataset.size - 1 > INT32_MAX or largest > INT32_MAX:
        raise ValueError(
            f"the level dataset for bits = {bits}, fanins = {fanins} overflows int32: "
            f"{dataset.size} samples, largest value {largest}"
        )
    return dataset


def _digits(dataset: CascadeLevelDataset, index: jax.Array) -> jax.Array:
    """Grid digits ``a [I]`` (int32) of a scalar sample index."""
    radix = np.array(
        [1] + [dataset.low_levels * dataset.levels**m for m in range(dataset.inputs - 1)],
        np.int32,
    )
    modulus = np.array([dataset.low_levels] + [dataset.levels] * (dataset.inputs - 1), np.int32)
    return (index // radix) % modulus


def _exact_sum(dataset: CascadeLevelDataset, digits: jax.Array) -> jax.Array:
    """``S = a_0 + P_{l-1} sum_{m>=1} 4^(r m) a_m``: the unit's exact server sum (int32)."""
    weights = np.array(
        [1]
        + [
            dataset.child_scale * 4 ** (dataset.symbols_per_input * m)
            for m in range(1, dataset.inputs)
        ],
        np.int32,
    )
    return jnp.sum(digits * weights)


def _level_sample(dataset: CascadeLevelDataset, index: jax.Array) -> Samples:
    digits = _digits(dataset, index)
    total = _exact_sum(dataset, digits)
    quotient = total // dataset.scale
    if dataset.final:
        target = quotient
    else:
        target = total % dataset.scale + 4**dataset.remainder_symbols * quotient
    x = jnp.concatenate(
        [
            grid_inputs(digits[:1], dataset.scale),
            grid_inputs(digits[1:], dataset.unit_servers),
            jnp.zeros(dataset.onn_inputs - dataset.inputs, jnp.float32),
        ]
    )
    return Samples(x, target, encode_pam4(target, bits=dataset.bits))


@functools.partial(jax.jit, static_argnames="dataset")
def _level_samples(dataset: CascadeLevelDataset, indices: jax.Array) -> Samples:
    return jax.vmap(functools.partial(_level_sample, dataset))(indices)


def _reachable(dataset: CascadeLevelDataset, index: jax.Array) -> jax.Array:
    digits = _digits(dataset, index)
    n, p = dataset.unit_servers, dataset.child_scale
    top = 4**dataset.symbols_per_input - 1
    deficiency = jnp.sum(n * top - digits[1:])
    # Children whose upper digits are all at the top cannot be avoided beyond the
    # deficiency; each of them has a low digit of at most top * P_{l-1}.
    saturated = n - jnp.minimum(n, deficiency)
    return digits[0] <= n * ((top + 1) * p - 1) - saturated * (p - 1)


@functools.partial(jax.jit, static_argnames="dataset")
def _reachable_batch(dataset: CascadeLevelDataset, indices: jax.Array) -> jax.Array:
    return jax.vmap(functools.partial(_reachable, dataset))(indices)


def reachable_inputs(dataset: CascadeLevelDataset, indices: jax.typing.ArrayLike) -> jax.Array:
    """Which grid points some combination of server values reaches.

    A child over ``P_{l-1}`` servers has an exact sum ``v`` in ``[0, P_{l-1} (2^B - 1)]``;
    written as a low digit in ``[0, 4^r P_{l-1})`` and base-``4^r`` upper digits, only the
    child at the top of every upper digit is limited to a low digit of at most
    ``(4^r - 1) P_{l-1}``. With ``D = sum_{m>=1} (N_l (4^r - 1) - a_m)`` at most
    ``min(N_l, D)`` children can avoid the top, so the point is reachable iff
    ``a_0 <= N_l (4^r P_{l-1} - 1) - (N_l - min(N_l, D)) (P_{l-1} - 1)``. Checked against
    :func:`brute_force_level_inputs` in the tests. Jittable (``dataset`` static).

    Args:
        dataset: the level's set.
        indices: ``[n]`` integer sample indices in ``[0, size)``.

    Returns:
        ``[n]`` bool.

    Examples:
        >>> level2 = make_level_dataset(8, (4, 4))
        >>> int(jnp.sum(~reachable_inputs(level2, jnp.arange(level2.size))))
        105
    """
    return _reachable_batch(dataset, jnp.asarray(indices).astype(jnp.int32))


def brute_force_level_inputs(dataset: CascadeLevelDataset) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices and targets of every combination of children's exact sums (small cases).

    Independent of the grid arithmetic: every child value ``v`` in
    ``[0, P_{l-1} (2^B - 1)]`` is turned into the channels a child sends (``t = v // P``,
    ``rho = v % P``, the symbols of ``t``, ``c_0 = t_0 + rho / P``), the children are
    averaged by the preprocessing rule, and the target is taken from ``sum v`` directly.

    Args:
        dataset: the level's set.

    Returns:
        ``(index, target)``: ``[C]`` int64 grid index of each combination and ``[C]`` its
        target, over all ``C = (P_{l-1} (2^B - 1) + 1)^{N_l}`` combinations.

    Raises:
        ValueError: if ``C`` exceeds ``2^22``.
    """
    p, n, b = dataset.child_scale, dataset.unit_servers, dataset.value_bits
    r, inputs = dataset.symbols_per_input, dataset.inputs
    values = p * (2**b - 1) + 1
    if values**n > MAX_BRUTE_FORCE_CHILDREN:
        raise ValueError(
            f"brute force over {values}^{n} children combinations exceeds "
            f"{MAX_BRUTE_FORCE_CHILDREN}"
        )
    v = np.array(list(itertools.product(range(values), repeat=n)), np.int64)  # [C, N]
    t, rho = v // p, v % p
    symbols = (t[..., None] // 4 ** np.arange(dataset.symbols)) % 4  # [C, N, K]
    grouped = symbols.reshape(len(v), n, inputs, r) @ (4 ** np.arange(r))  # [C, N, I]
    a = grouped.sum(axis=1)  # N_l x_m for m >= 1
    a[:, 0] = (p * grouped[:, :, 0] + rho).sum(axis=1)  # P_l x_0
    radix = np.array([1] + [dataset.low_levels * dataset.levels**m for m in range(inputs - 1)])
    total = v.sum(axis=1)
    if dataset.final:
        target = total // dataset.scale
    else:
        target = total % dataset.scale + 4**dataset.remainder_symbols * (total // dataset.scale)
    return a @ radix, target
