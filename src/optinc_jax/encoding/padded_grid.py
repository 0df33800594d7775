r"""The exhaustive grid padded with virtual levels of the most significant input.

Not in the paper, which trains on the exhaustive grid alone. :class:`PaddedGrid` extends
the grid of :class:`~optinc_jax.encoding.dataset.DatasetSpec` by ``pad_levels`` virtual
levels of the most significant input ``x_{I-1}`` on each side: ``a_{I-1} = N x_{I-1}``
runs over ``[-p, L + p)`` instead of ``[0, L)``, so the weighted sum
``S = sum_m (4^r)^m a_m`` runs ``p (4^r)^(I-1)`` beyond both ends of its range. No server
combination produces those inputs; they exist for training only. Every output symbol but
the least significant holds its value at the nearest end of the range (the symbols of
``clip(floor(S / N), 0, 2^B - 1)``); the least significant one continues its sawtooth
``floor(S / N) mod 4`` for ``continued_values`` values of ``floor(S / N)`` beyond each end
(``None``, the default: throughout the padding) and beyond those holds its value at the
end, like the others (``0``: held everywhere, every virtual target the end's).
``target`` is the value the symbols encode.

Why: the 8b8s networks trained on the grid fail on the wraps of symbol 0 near both ends
of ``S`` (README, "Training recipe", items 8, 13, 17). With four virtual levels on each
side, the 8b8s preset's network was right on every input of the real grid for one seed
of three (the numbers: ``optinc_jax.scenarios``, the 8b8s recipe; README item 19).
Sample ``i`` of the padded set has the mixed-radix digits of ``i`` (the last digit offset
by ``-p``), as in the grid; the real grid's samples are the contiguous index range
:meth:`PaddedGrid.grid_range`, in the grid's own order.

Why a limited continuation: a network trained with the sawtooth continued throughout ended
flat below ``S`` = 12, outputting the mean of the continued targets there, wrong for the
real inputs of ``t`` = 0 (README item 20); with held targets a flat region beyond the
continued values outputs the end's target. Measured on 8b8s (seed 0, layers 2-7, one
CPU; README item 21): held at once (``0``) 89 wrong inputs, at the top's last wraps;
continued for 8 values 23, at one wrap (``S`` = 31|32); for 16 values 33, at one step
(``S`` = 40 and 47); throughout (the preset) 22. Seed 1 ended at 42 (8) and 90 (16).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.dataset import INT32_MAX, DatasetSpec, Samples, make_dataset_spec
from optinc_jax.encoding.pam4 import encode_pam4
from optinc_jax.encoding.units import grid_inputs
from optinc_jax.validation import require_int

__all__ = ["PaddedGrid", "make_padded_grid"]


@dataclasses.dataclass(frozen=True)
class PaddedGrid:
    """The grid ``grid`` with ``pad_levels`` virtual levels of its last input on each side.

    A :class:`~optinc_jax.encoding.dataset.Dataset`: hashable (a static ``jax.jit``
    argument) and its ``samples`` jittable. Build it with :func:`make_padded_grid`.

    Attributes:
        grid: the real exhaustive grid.
        pad_levels: virtual levels ``p >= 0`` on each side of the most significant input.
        continued_values: values of ``floor(S / N)`` beyond each end over which the least
            significant target symbol continues its sawtooth before it holds its value at
            the end; ``None``: throughout the padding; ``0``: held at once.
    """

    grid: DatasetSpec
    pad_levels: int
    continued_values: int | None = None

    @property
    def bits(self) -> int:
        """Bit width ``B`` of the targets (the grid's)."""
        return self.grid.bits

    @property
    def size(self) -> int:
        """Samples: ``L^(I-1) (L + 2 p)``."""
        levels = self.grid.levels
        return levels ** (self.grid.inputs - 1) * (levels + 2 * self.pad_levels)

    def grid_range(self) -> tuple[int, int]:
        """``(start, stop)``: the indices of the real grid's samples, in the grid's order.

        Examples:
            >>> padded = make_padded_grid(make_dataset_spec(4, 1, 2), 1)
            >>> padded.grid_range(), padded.size
            ((4, 20), 24)
        """
        block = self.grid.levels ** (self.grid.inputs - 1)
        start = self.pad_levels * block
        return start, start + self.grid.size

    def samples(self, indices: jax.Array) -> Samples:
        """Samples at ``indices [n]`` (int32, assumed in ``[0, size)``); jittable, no checks."""
        return _padded_samples(self, jnp.asarray(indices).astype(jnp.int32))


def make_padded_grid(
    grid: DatasetSpec, pad_levels: int, continued_values: int | None = None
) -> PaddedGrid:
    """Validated :class:`PaddedGrid`.

    Args:
        grid: the real grid (:func:`~optinc_jax.encoding.dataset.make_dataset_spec`).
        pad_levels: virtual levels on each side of the most significant input, ``>= 0``
            (0: the grid itself, in the same order).
        continued_values: ``None`` or ``>= 0`` (:class:`PaddedGrid`).

    Returns:
        The padded set.

    Raises:
        ValueError: on an invalid ``grid``, a negative ``pad_levels`` or
            ``continued_values``, or a set whose indices or weighted sums do not fit int32.

    Examples:
        >>> padded = make_padded_grid(make_dataset_spec(8, 8), 4)
        >>> padded.size, padded.grid_range()
        (515625, (62500, 453125))
    """
    grid = make_dataset_spec(*grid)
    pad_levels = require_int("pad_levels", pad_levels, 0)
    if continued_values is not None:
        continued_values = require_int("continued_values", continued_values, 0)
    padded = PaddedGrid(grid, pad_levels, continued_values)
    top = 4 ** (grid.symbols_per_input * (grid.inputs - 1))
    largest_sum = grid.servers * (2**grid.bits - 1) + pad_levels * top
    if padded.size - 1 > INT32_MAX or largest_sum > INT32_MAX:
        raise ValueError(
            f"pad_levels = {pad_levels} makes the padded set of {grid} overflow int32: "
            f"{padded.size} samples, largest weighted sum {largest_sum}"
        )
    return padded


def _padded_sample(padded: PaddedGrid, index: jax.Array) -> Samples:
    """Sample ``index`` (a scalar int32, assumed in range) of the padded set."""
    grid = padded.grid
    levels, inputs = grid.levels, grid.inputs
    radix = np.array([levels**m for m in range(inputs)], np.int32)
    weights = np.array([4 ** (grid.symbols_per_input * m) for m in range(inputs)], np.int32)
    digits = (index // radix) % levels
    last = index // radix[-1] - padded.pad_levels  # in [-p, L + p)
    digits = digits.at[-1].set(last)
    total = jnp.sum(digits * weights)
    raw = jnp.floor_divide(total, grid.servers)  # floor, also below zero
    top = 2**grid.bits - 1
    symbols = encode_pam4(jnp.clip(raw, 0, top), bits=grid.bits)
    continued = padded.continued_values
    if continued is None:
        symbols = symbols.at[0].set(jnp.mod(raw, 4))
    else:
        within = (raw >= -continued) & (raw <= top + continued)
        symbols = symbols.at[0].set(jnp.where(within, jnp.mod(raw, 4), symbols[0]))
    target = jnp.sum(symbols * (4 ** np.arange(grid.symbols, dtype=np.int32)))
    return Samples(
        inputs=grid_inputs(digits, grid.servers),
        target=target.astype(jnp.int32),
        target_symbols=symbols.astype(jnp.int32),
    )


@functools.partial(jax.jit, static_argnames="padded")
def _padded_samples(padded: PaddedGrid, indices: jax.Array) -> Samples:
    """Jitted batch of samples at ``indices`` (``[n]`` int32, assumed in range)."""
    return jax.vmap(functools.partial(_padded_sample, padded))(indices)
