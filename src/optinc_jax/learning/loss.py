"""The two-stage training loss of the ONN (SPEC section 4).

Stage 1 (epochs < E1) fits every raw output to its PAM4 symbol with weights growing with
the symbol's significance. Stage 2 fine-tunes on the reconstructed value. The paper's
literal stage 2 (MSE of ``sum_k 4^k y_k`` against ``t``) has a null space,
``y + c (4, -1, 0, ...)`` reconstructs the same value, so by default stage 2 keeps the
per-symbol term beside it (``"hybrid"``); ``"literal"`` and ``"ste"`` (reconstruction of
straight-through-rounded symbols) are offered too.
"""

from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optinc_jax.encoding.pam4 import place_values
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "STAGE2_LOSSES",
    "Stage2Loss",
    "receiver_hinge",
    "reconstruction_mse",
    "rounded_reconstruction_mse",
    "symbol_weights",
    "two_stage_loss",
    "weighted_symbol_mse",
]

Stage2Loss = Literal["hybrid", "literal", "ste"]
"""Stage-2 losses: ``hybrid`` (the default; differs from the paper: its per-symbol term is
kept beside the reconstruction MSE), ``literal`` (the paper's reconstruction MSE alone) and
``ste`` (per-symbol term plus reconstruction of straight-through-rounded symbols)."""

STAGE2_LOSSES: tuple[str, ...] = get_args(Stage2Loss)

_TOP_LEVEL = 3


def receiver_hinge(y: ArrayLike, target_symbols: ArrayLike, tolerance: float) -> jax.Array:
    """Per-entry hinge ``max(|y - t| - tolerance, 0)``, one-sided at the outer levels.

    The receiver reads any amplitude below level 0 as 0 and above level 3 as 3, so an
    output past its outer target level costs nothing. Not in the paper: the refit and the
    hinge finishing minimize its square (the paper trains on the plain MSE only).

    Args:
        y: raw outputs ``[..., K]`` (symbol units).
        target_symbols: PAM4 target symbols ``[..., K]`` in ``{0, .., 3}``.
        tolerance: dead-zone half-width in symbol units (``0.5`` is the receiver's
            threshold; the caller validates it).

    Returns:
        ``[..., K]`` non-negative excess distances (dtype of ``y``).

    Examples:
        >>> y = jnp.array([-1.0, 0.75, 1.25, 3.5])
        >>> receiver_hinge(y, jnp.array([0, 1, 1, 3]), 0.25)
        Array([0., 0., 0., 0.], dtype=float32)
        >>> receiver_hinge(y, jnp.array([1, 0, 2, 2]), 0.25)
        Array([1.75, 0.5 , 0.5 , 1.25], dtype=float32)
    """
    y = jnp.asarray(y)
    residual = y - jnp.asarray(target_symbols, y.dtype)
    excess = jnp.maximum(jnp.abs(residual) - tolerance, 0.0)
    target = jnp.asarray(target_symbols)
    free = ((target == 0) & (residual < 0)) | ((target == _TOP_LEVEL) & (residual > 0))
    return jnp.where(free, 0.0, excess)


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
    num_symbols = require_int("num_symbols", num_symbols, 1)
    base = require_real("base", base, low=0.0, low_inclusive=False)
    raw = jnp.asarray(base, jnp.float32) ** jnp.arange(num_symbols, dtype=jnp.float32)
    return raw / raw.sum()


def weighted_symbol_mse(
    y: ArrayLike, target_symbols: ArrayLike, weights: ArrayLike, *, tolerance: float = 0.0
) -> jax.Array:
    """Stage-1 loss ``mean_s sum_k w_k max(|y_sk - t_sk| - tolerance, 0)^2``.

    With ``tolerance`` 0 (the default) this is the paper's weighted MSE. A positive
    tolerance is a dead zone: an output within ``tolerance`` of its symbol costs nothing,
    so the gradient goes to the outputs near or past a receiver threshold (0.5 away).
    Differs from the paper (plain MSE); not the default.

    Args:
        y: raw outputs ``[batch, K]``.
        target_symbols: PAM4 target symbols ``[batch, K]``.
        weights: ``[K]`` per-symbol weights.
        tolerance: dead-zone half-width in symbol units, in ``[0, 0.5)``.

    Returns:
        Scalar loss (squared symbol units).

    Raises:
        ValueError: on a tolerance outside ``[0, 0.5)``.

    Examples:
        >>> y = jnp.array([[0.25, 2.0], [1.75, 3.0]])
        >>> t = jnp.array([[0, 2], [1, 3]])
        >>> print(weighted_symbol_mse(y, t, jnp.array([1.0, 0.0]), tolerance=0.25))
        0.125
    """
    tolerance = require_real("tolerance", tolerance, low=0.0, high=0.5, high_inclusive=False)
    error = jnp.asarray(y) - jnp.asarray(target_symbols, jnp.asarray(y).dtype)
    if tolerance:
        error = jnp.maximum(jnp.abs(error) - tolerance, 0.0)
    return jnp.mean(full_matmul(error**2, jnp.asarray(weights, error.dtype)))


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
    value = full_matmul(y, place_values(y.shape[-1]).astype(y.dtype))
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
    stage2: Stage2Loss = "hybrid",
    tolerance: float = 0.0,
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
        tolerance: dead zone of the per-symbol term (:func:`weighted_symbol_mse`); the
            reconstruction terms have none.

    Returns:
        Scalar loss.

    Raises:
        ValueError: on an unknown stage or ``stage2``.
    """
    stage = require_choice("stage", stage, (1, 2))
    stage2 = require_choice("stage2", stage2, STAGE2_LOSSES)
    if stage == 1:
        return weighted_symbol_mse(y, target_symbols, weights, tolerance=tolerance)
    if stage2 == "literal":
        return reconstruction_mse(y, target, bits=bits)
    if stage2 == "hybrid":
        return weighted_symbol_mse(
            y, target_symbols, weights, tolerance=tolerance
        ) + reconstruction_mse(y, target, bits=bits)
    return weighted_symbol_mse(
        y, target_symbols, weights, tolerance=tolerance
    ) + rounded_reconstruction_mse(y, target, bits=bits)
