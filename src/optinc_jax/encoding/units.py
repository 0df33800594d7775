"""The optical units around the ONN: preprocessing, receiver, reconstruction, splitting.

Data path of one gradient value through an OptINC (SPEC section 2):

1. every server ``n`` sends the PAM4 symbols ``s_n`` of its quantized value ``u_n``;
2. :func:`preprocess` (linear optics) turns the ``[servers, K]`` symbols into ``I`` ONN
   inputs ``x_m``;
3. the ONN outputs ``K`` amplitudes ``y_k``, which :func:`split_to_servers` broadcasts to
   all servers;
4. every server's :func:`receiver` slices them back to symbols and :func:`reconstruct_average`
   rebuilds ``t_hat``, which should equal the target :func:`quantized_average`.

Functions are written for one gradient value; callers ``jax.vmap`` over values.

Invalid values are carried, never turned into valid ones (the policy of
:mod:`optinc_jax.encoding.pam4` continued): under ``jit`` an invalid symbol makes its ONN
input NaN in :func:`preprocess`, a NaN or infinite amplitude becomes
:data:`~optinc_jax.encoding.pam4.INVALID_SYMBOL` in :func:`receiver`, and such a symbol makes
:func:`reconstruct_average` return :data:`~optinc_jax.encoding.pam4.INVALID_CODE`, which
equals no target. So a diverged network never decodes to a correct-looking average.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.pam4 import INVALID_SYMBOL, decode_pam4, place_values
from optinc_jax.validation import require_in_range, require_int, require_integer_dtype


@jax.jit
def _quantized_average(u: jax.Array) -> jax.Array:
    """Unvalidated jitted core of :func:`quantized_average`."""
    u = u.astype(jnp.int32)
    servers = u.shape[0]
    return jnp.sum(u // servers, axis=0) + jnp.sum(u % servers, axis=0) // servers


def quantized_average(u: jax.typing.ArrayLike) -> jax.Array:
    """The OptINC target ``t = floor((1/N) sum_n u_n)``, in exact integer arithmetic.

    Computed as ``sum_n (u_n // N) + (sum_n (u_n mod N)) // N`` so that no intermediate sum
    exceeds ``max u + N (N - 1)``: no int32 overflow for any valid ``u`` and ``N <= 46341``.

    Args:
      u: ``[servers, ...]`` integers in ``[0, 2^31)`` (checked when concrete).

    Returns:
      ``[...]`` int32 floor of the mean over the servers axis.

    Raises:
      ValueError: if ``u`` is not an integer array with a leading servers axis, or (concrete)
        holds values outside ``[0, 2^31)``.

    Examples:
      >>> quantized_average(jnp.array([[3, 250], [4, 255]]))
      Array([  3, 252], dtype=int32)
    """
    require_in_range("u", u, 0, 2**31)
    u = jnp.asarray(u)
    require_integer_dtype("u", u)
    if u.ndim < 1 or u.shape[0] < 1:
        raise ValueError(f"u must have shape [servers >= 1, ...], got {u.shape}")
    return _quantized_average(u)


def grid_inputs(counts: jax.Array, servers: int) -> jax.Array:
    """ONN inputs ``x = (N x) * fl32(1/N)`` from the exact integers ``N x``, in float32.

    One float32 multiplication by the rounded reciprocal, not a division: XLA rewrites a
    division by a constant into such a multiplication under ``jit`` but not eagerly, so
    this is the form that gives bitwise the same ``x`` on every path (eager, jit, NumPy).
    Every producer of ONN inputs (the preprocessing unit, the exhaustive datasets) uses it.

    Args:
      counts: ``[...]`` integers ``N x`` (exact).
      servers: number of servers ``N`` (static).

    Returns:
      ``[...]`` float32 ``x``.

    Examples:
      >>> grid_inputs(jnp.array([0, 3, 12]), 4)
      Array([0.  , 0.75, 3.  ], dtype=float32)
    """
    return counts.astype(jnp.float32) * np.float32(1 / servers)


@functools.partial(jax.jit, static_argnames="inputs")
def _preprocess(symbols: jax.Array, inputs: int) -> jax.Array:
    """Unvalidated jitted core of :func:`preprocess`."""
    servers, num_symbols = symbols.shape
    per_input = num_symbols // inputs
    grouped = symbols.astype(jnp.int32).reshape(servers, inputs, per_input)
    weights = place_values(per_input).reshape(1, 1, per_input)
    counts = jnp.sum(grouped * weights, axis=(0, 2))  # N x_m, exact
    valid = jnp.all((grouped >= 0) & (grouped <= 3), axis=(0, 2))
    return jnp.where(valid, grid_inputs(counts, servers), jnp.nan)


def preprocess(symbols: jax.typing.ArrayLike, *, inputs: int = 4) -> jax.Array:
    """Preprocessing unit: group ``r = K / I`` symbols per ONN input and average over servers.

    ``x_m = (1/N) sum_n sum_{j<r} 4^j s_{n, m r + j}`` for ``m = 0 .. I-1``, so each ``x_m``
    lies on the grid ``{0, 1/N, ..., 4^r - 1}``. Optically this is a fixed linear
    combination of the received amplitudes; it is computed here exactly as the integer sum
    ``N x_m`` times the float32 reciprocal of ``N``. Write for one value; callers vmap.

    Args:
      symbols: ``[servers, K]`` integer PAM4 symbols in ``{0, 1, 2, 3}`` (checked when
        concrete), ``K`` divisible by ``inputs``.
      inputs: number of ONN inputs ``I``.

    Returns:
      ``[inputs]`` float32 ONN inputs ``x``.

    Raises:
      ValueError: if ``symbols`` is not a 2-D integer array, ``K`` is not divisible by
        ``inputs``, ``inputs < 1``, or (concrete) a symbol is outside ``{0, 1, 2, 3}``.

    Examples:
      >>> preprocess(jnp.array([[3, 1, 0, 2], [1, 1, 2, 2]]), inputs=2)
      Array([6., 9.], dtype=float32)
    """
    inputs = require_int("inputs", inputs, 1)
    require_in_range("symbols", symbols, 0, 4)
    symbols = jnp.asarray(symbols)
    require_integer_dtype("symbols", symbols)
    if symbols.ndim != 2 or symbols.shape[0] < 1:
        raise ValueError(f"symbols must have shape [servers >= 1, K], got {symbols.shape}")
    num_symbols = symbols.shape[1]
    if num_symbols % inputs:
        raise ValueError(
            f"the number of symbols K = {num_symbols} must be divisible by inputs = {inputs}"
        )
    return _preprocess(symbols, inputs)


def receiver(y: jax.typing.ArrayLike) -> jax.Array:
    """Receiver decision: slice amplitudes to the nearest PAM4 level, ``clip(round(y), 0, 3)``.

    A hardware PAM4 receiver has three thresholds (0.5, 1.5, 2.5 in symbol units); any
    amplitude above the top one reads as level 3 and any below the bottom one as level 0.
    This saturation is the physical behaviour, not a silent coercion. Ties round half to
    even (``jnp.round``). A NaN or infinite amplitude (a diverged network) has no level: it
    reads as ``INVALID_SYMBOL`` (-1), which decodes to no valid average.

    Args:
      y: ``[..., K]`` real output amplitudes in symbol units (level ``s`` is amplitude ``s``).

    Returns:
      ``[..., K]`` int32 symbols in ``{0, 1, 2, 3}``, or -1 where ``y`` is not finite.

    Examples:
      >>> receiver(jnp.array([-0.7, 1.4, 2.6, 9.0, jnp.nan]))
      Array([ 0,  1,  3,  3, -1], dtype=int32)
    """
    return _receiver(jnp.asarray(y))


@jax.jit
def _receiver(y: jax.Array) -> jax.Array:
    """Jitted core of :func:`receiver`."""
    symbols = jnp.clip(jnp.round(jnp.where(jnp.isfinite(y), y, 0)), 0, 3).astype(jnp.int32)
    return jnp.where(jnp.isfinite(y), symbols, INVALID_SYMBOL)


def reconstruct_average(y_hat: jax.typing.ArrayLike) -> jax.Array:
    """Reconstructed average ``t_hat = sum_k 4^k y_hat_k`` from received symbols.

    The server-side inverse of the PAM4 encoding (:func:`optinc_jax.encoding.pam4.decode_pam4`).

    Args:
      y_hat: ``[..., K]`` integer symbols from :func:`receiver`.

    Returns:
      ``[...]`` int32 ``t_hat``.

    Raises:
      ValueError: as :func:`optinc_jax.encoding.pam4.decode_pam4`.

    Examples:
      >>> reconstruct_average(receiver(jnp.array([2.9, 0.2, 1.1, 0.4])))
      Array(19, dtype=int32)
    """
    return decode_pam4(y_hat)


def exact_average(x: jax.typing.ArrayLike, bits: int) -> jax.Array:
    """The average before the floor, ``v = sum_m 4^(r m) x_m``, from the ONN inputs.

    Every OptINC target is ``t = floor(v)`` (SPEC section 2): ``v`` is the one number the
    ONN's outputs are a function of, with steps of ``1/N``.

    Args:
      x: ``[..., I]`` preprocessed inputs (:func:`preprocess`).
      bits: bit width ``B`` of the values; ``r = (B / 2) / I`` symbols per input.

    Returns:
      ``[...]`` ``v`` in the dtype of ``x``.

    Raises:
      ValueError: if ``B / 2`` is not a multiple of ``I``.

    Examples:
      >>> exact_average(jnp.array([0.5, 0.25, 0.0, 1.0]), bits=8)
      Array(65.5, dtype=float32)
    """
    x = jnp.asarray(x)
    inputs = x.shape[-1]
    if inputs < 1 or (bits // 2) % inputs:
        raise ValueError(
            f"{bits} bits do not split into {inputs} ONN inputs (x of shape {x.shape})"
        )
    weights = 4.0 ** ((bits // 2 // inputs) * np.arange(inputs))
    return jnp.sum(x * weights.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (inputs,)), axis=-1)


def split_to_servers(
    y: jax.typing.ArrayLike, servers: int, *, receiver_gain: float | None = None
) -> jax.Array:
    """Splitting unit: broadcast the ONN outputs to every server.

    Each symbol goes through a lossless ``1 -> N`` splitter: every output carries amplitude
    ``y / sqrt(N)``, i.e. power ``|y|^2 / N``, and the total power is conserved. Each
    server's receiver then applies the amplitude gain ``receiver_gain`` (default
    ``sqrt(N)``, restoring the ONN's levels), so every server decodes the same ``t_hat``.

    Args:
      y: ``[K]`` ONN output amplitudes in symbol units.
      servers: number of servers ``N``.
      receiver_gain: amplitude gain of each receiver; ``None`` for the ideal ``sqrt(N)``,
        ``1.0`` to see the bare splitter outputs.

    Returns:
      ``[servers, K]`` amplitudes at the servers' decision circuits.

    Raises:
      ValueError: if ``y`` is not 1-D or ``servers < 1``.

    Examples:
      >>> split_to_servers(jnp.array([2.0, 1.0]), 4, receiver_gain=1.0)
      Array([[1. , 0.5],
             [1. , 0.5],
             [1. , 0.5],
             [1. , 0.5]], dtype=float32)
    """
    servers = require_int("servers", servers, 1)
    y = jnp.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must have shape [K], got {y.shape}")
    gain = math.sqrt(servers) if receiver_gain is None else receiver_gain
    per_output = jnp.broadcast_to(y / math.sqrt(servers), (servers, y.shape[0]))
    return per_output * gain
