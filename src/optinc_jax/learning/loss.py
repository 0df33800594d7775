"""The two-stage training loss of the ONN (SPEC section 4).

Stage 1 (epochs < E1) fits every raw output to its PAM4 symbol with weights growing with
the symbol's significance. Stage 2 fine-tunes on the reconstructed value. The paper's
literal stage 2 (MSE of ``sum_k 4^k y_k`` against ``t``) has a null space,
``y + c (4, -1, 0, ...)`` reconstructs the same value, so by default stage 2 keeps the
per-symbol term beside it (``"hybrid"``); ``"literal"`` and ``"ste"`` (reconstruction of
straight-through-rounded symbols) are offered too.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "STAGE2_LOSSES",
    "reconstruction_mse",
    "rounded_reconstruction_mse",
    "symbol_weights",
    "two_stage_loss",
    "weighted_symbol_mse",
]

STAGE2_LOSSES = ("hybrid", "literal", "ste")


def symbol_weights(num_symbols: int, *, base: float = 2.0) -> jax.Array:
    """Per-symbol weights ``w_k`` proportional to ``base**k``, summing to 1.

    Args:
        num_symbols: K.
        base: growth per symbol of significance (1 gives uniform weights).

    Returns:
        ``[K]`` float32 weights.

    Examples:
        >>> print(jnp.round(15 * symbol_weights(4), 4))
        [1. 2. 4. 8.]
    """
    if num_symbols < 1 or base <= 0:
        raise ValueError(f"need num_symbols >= 1 and base > 0, got {num_symbols}, {base}")
    raw = jnp.asarray(base, jnp.float32) ** jnp.arange(num_symbols, dtype=jnp.float32)
    return raw / raw.sum()


def weighted_symbol_mse(y: ArrayLike, target_symbols: ArrayLike, weights: ArrayLike) -> jax.Array:
    """Stage-1 loss ``mean_s sum_k w_k (y_sk - t_sk)^2``.

    Args:
        y: raw outputs ``[batch, K]``.
        target_symbols: PAM4 target symbols ``[batch, K]``.
        weights: ``[K]`` per-symbol weights.

    Returns:
        Scalar loss (squared symbol units).
    """
    error = jnp.asarray(y) - jnp.asarray(target_symbols, jnp.asarray(y).dtype)
    return jnp.mean(error**2 @ jnp.asarray(weights, error.dtype))


def _place_values(num_symbols: int, dtype) -> jax.Array:
    return 4.0 ** jnp.arange(num_symbols, dtype=dtype)


def reconstruction_mse(y: ArrayLike, target: ArrayLike, *, bits: int) -> jax.Array:
    """The paper's stage-2 loss: MSE of ``sum_k 4^k y_k`` against ``t``, over ``(2^B - 1)^2``.

    Args:
        y: raw outputs ``[batch, K]``.
        target: integer targets ``[batch]``.
        bits: B.

    Returns:
        Scalar normalized loss.
    """
    y = jnp.asarray(y)
    value = y @ _place_values(y.shape[-1], y.dtype)
    return jnp.mean((value - jnp.asarray(target, y.dtype)) ** 2) / (2.0**bits - 1.0) ** 2


def rounded_reconstruction_mse(y: ArrayLike, target: ArrayLike, *, bits: int) -> jax.Array:
    """Reconstruction MSE of straight-through-rounded symbols.

    The forward pass rounds each symbol to its nearest level (what the receiver does), the
    backward pass treats rounding as the identity.

    Args:
        y: raw outputs ``[batch, K]``.
        target: integer targets ``[batch]``.
        bits: B.

    Returns:
        Scalar normalized loss.
    """
    y = jnp.asarray(y)
    rounded = y + jax.lax.stop_gradient(jnp.round(y) - y)
    return reconstruction_mse(rounded, target, bits=bits)


def two_stage_loss(
    y: ArrayLike,
    target_symbols: ArrayLike,
    target: ArrayLike,
    *,
    stage: int,
    bits: int,
    weights: ArrayLike,
    stage2: str = "hybrid",
) -> jax.Array:
    """The ONN loss of the given stage.

    Args:
        y: raw outputs ``[batch, K]``.
        target_symbols: ``[batch, K]`` PAM4 targets.
        target: ``[batch]`` integer targets ``t``.
        stage: 1 (per-symbol) or 2 (reconstruction); static.
        bits: B.
        weights: ``[K]`` per-symbol weights.
        stage2: ``"hybrid"`` (per-symbol term plus reconstruction MSE, the default),
            ``"literal"`` (reconstruction MSE alone, as the paper writes it) or ``"ste"``
            (per-symbol term plus reconstruction of straight-through-rounded symbols).

    Returns:
        Scalar loss.

    Raises:
        ValueError: on an unknown stage or ``stage2``.
    """
    if stage == 1:
        return weighted_symbol_mse(y, target_symbols, weights)
    if stage != 2:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if stage2 == "literal":
        return reconstruction_mse(y, target, bits=bits)
    if stage2 == "hybrid":
        return weighted_symbol_mse(y, target_symbols, weights) + reconstruction_mse(
            y, target, bits=bits
        )
    if stage2 == "ste":
        return weighted_symbol_mse(y, target_symbols, weights) + rounded_reconstruction_mse(
            y, target, bits=bits
        )
    raise ValueError(f"stage2 must be one of {STAGE2_LOSSES}, got {stage2!r}")
