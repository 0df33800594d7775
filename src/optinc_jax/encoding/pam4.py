"""PAM4 encoding of B-bit unsigned integers into K = B / 2 four-level symbols.

A value ``u`` in ``[0, 2^B)`` becomes the symbols ``s_k = floor(u / 4^k) mod 4`` for
``k = 0 .. K-1`` (``k = 0`` least significant), and ``u = sum_k 4^k s_k``. All integer work is
exact int32 arithmetic, so ``B`` is at most 30 (``K`` at most 15).

**Invalid values under ``jit``.** Called eagerly, the functions refuse out-of-range values
with a ``ValueError``. Traced values cannot raise, so inside ``jax.jit`` or ``jax.vmap`` an
invalid value is carried, never wrapped into a valid-looking one: :func:`encode_pam4` maps a
``u`` outside ``[0, 2^B)`` to ``K`` copies of :data:`INVALID_SYMBOL` (-1);
:func:`decode_pam4` maps any word holding a symbol outside ``{0, 1, 2, 3}`` to
:data:`INVALID_CODE` (-1); :func:`pam4_levels` maps such a symbol to a NaN amplitude.
"""

import functools

import jax
import jax.numpy as jnp

from optinc_jax.scenarios import MAX_BITS
from optinc_jax.validation import require_in_range, require_int, require_integer_dtype

INVALID_SYMBOL = -1
"""Symbol written for a value outside ``[0, 2^B)`` by a traced :func:`encode_pam4`."""

INVALID_CODE = -1
"""Value returned by a traced :func:`decode_pam4` for a word with an invalid symbol."""


def num_symbols(bits: int) -> int:
    """Number of PAM4 symbols ``K = B / 2`` of a ``bits``-bit value.

    Args:
      bits: bit width ``B``; even, in ``[2, 30]``.

    Returns:
      ``K = bits // 2``.

    Raises:
      ValueError: if ``bits`` is odd, below 2 or above 30 (int32 arithmetic).

    Examples:
      >>> num_symbols(16)
      8
    """
    bits = require_int("bits", bits, 2)
    if bits % 2 or bits > MAX_BITS:
        raise ValueError(
            f"bits must be even and in [2, {MAX_BITS}] (K = bits / 2 PAM4 symbols in int32), "
            f"got {bits}"
        )
    return bits // 2


def place_values(count: int) -> jax.Array:
    """Place values ``4^k`` of the PAM4 symbols ``k = 0 .. count - 1``.

    Args:
      count: number of symbols (``1 <= count <= 15``).

    Returns:
      ``[count]`` int32 ``4^k``.

    Raises:
      ValueError: if ``count`` is not an integer in ``[1, 15]``.

    Examples:
      >>> place_values(3)
      Array([ 1,  4, 16], dtype=int32)
    """
    count = require_int("count", count, 1, MAX_BITS // 2)
    return 4 ** jnp.arange(count, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames="bits")
def _encode_pam4(u: jax.Array, bits: int) -> jax.Array:
    """Unvalidated jitted core of :func:`encode_pam4`."""
    symbols = bits // 2
    shifts = 2 * jnp.arange(symbols, dtype=jnp.int32).reshape((1,) * u.ndim + (symbols,))
    valid = jnp.expand_dims((u >= 0) & (u < 2**bits), -1)
    s = jnp.right_shift(jnp.expand_dims(u.astype(jnp.int32), -1), shifts) & 3
    return jnp.where(valid, s, INVALID_SYMBOL)


@jax.jit
def _decode_pam4(s: jax.Array) -> jax.Array:
    """Unvalidated jitted core of :func:`decode_pam4`."""
    weights = place_values(s.shape[-1]).reshape((1,) * (s.ndim - 1) + (s.shape[-1],))
    valid = jnp.all((s >= 0) & (s <= 3), axis=-1)
    return jnp.where(valid, jnp.sum(s.astype(jnp.int32) * weights, axis=-1), INVALID_CODE)


def encode_pam4(u: jax.typing.ArrayLike, *, bits: int) -> jax.Array:
    """Split unsigned integers into PAM4 symbols, least significant first.

    Args:
      u: ``[...]`` integers in ``[0, 2^bits)`` (checked when concrete).
      bits: bit width ``B``; even, in ``[2, 30]``.

    Returns:
      ``[..., K]`` int32 symbols in ``{0, 1, 2, 3}``, ``s_k = floor(u / 4^k) mod 4``.

    Raises:
      ValueError: on an invalid ``bits``, a non-integer ``u`` or (concrete) ``u`` out of range.

    Examples:
      >>> encode_pam4(jnp.array([0, 27, 255]), bits=8)
      Array([[0, 0, 0, 0],
             [3, 2, 1, 0],
             [3, 3, 3, 3]], dtype=int32)
    """
    num_symbols(bits)
    require_in_range("u", u, 0, 2**bits)
    u = jnp.asarray(u)
    require_integer_dtype("u", u)
    return _encode_pam4(u, bits)


def decode_pam4(s: jax.typing.ArrayLike) -> jax.Array:
    """Reassemble integers from PAM4 symbols: ``u = sum_k 4^k s_k``.

    Args:
      s: ``[..., K]`` integer symbols in ``{0, 1, 2, 3}`` (checked when concrete), ``K <= 15``.

    Returns:
      ``[...]`` int32 values in ``[0, 4^K)``.

    Raises:
      ValueError: on a non-integer ``s``, ``K`` outside ``[1, 15]`` or (concrete) symbols
        outside ``{0, 1, 2, 3}``.

    Examples:
      >>> decode_pam4(jnp.array([3, 2, 1, 0]))
      Array(27, dtype=int32)
    """
    require_in_range("s", s, 0, 4)
    s = jnp.asarray(s)
    require_integer_dtype("s", s)
    if s.ndim == 0 or not 1 <= s.shape[-1] <= MAX_BITS // 2:
        raise ValueError(f"s must have shape [..., K] with 1 <= K <= 15, got shape {s.shape}")
    return _decode_pam4(s)


def pam4_levels(s: jax.typing.ArrayLike) -> jax.Array:
    """Normalized optical amplitude ``s / 3`` of PAM4 symbols.

    Args:
      s: ``[...]`` integer symbols in ``{0, 1, 2, 3}`` (checked when concrete).

    Returns:
      ``[...]`` float32 amplitudes in ``{0, 1/3, 2/3, 1}`` (fraction of full scale).

    Raises:
      ValueError: on a non-integer ``s`` or (concrete) symbols outside ``{0, 1, 2, 3}``.

    Examples:
      >>> pam4_levels(jnp.array([0, 3]))
      Array([0., 1.], dtype=float32)
    """
    require_in_range("s", s, 0, 4)
    s = jnp.asarray(s)
    require_integer_dtype("s", s)
    return _pam4_levels(s)


@jax.jit
def _pam4_levels(s: jax.Array) -> jax.Array:
    """Unvalidated jitted core of :func:`pam4_levels`."""
    levels = s.astype(jnp.float32) / jnp.float32(3)
    return jnp.where((s >= 0) & (s <= 3), levels, jnp.nan)
