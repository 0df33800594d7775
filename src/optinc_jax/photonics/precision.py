"""Matrix products in full float32 on every backend.

XLA's default precision for a float32 (or complex64) matrix product depends on the
backend: full float32 on a CPU, TensorFloat-32 on NVIDIA tensor cores since Ampere (the
inputs rounded to 10 mantissa bits), bfloat16 passes on a TPU. The simulator's claims
need the full product everywhere: a projected block is ``diag(d) U`` with ``U``
orthogonal to float32 rounding, a loss is the float32 loss, the exhaustive check is the
float32 one. Measured (README, "Training recipe"): on an H100, the projection's
``P @ Q^T`` at the default precision left the approximated blocks of three 8b8s networks
diagonal x orthogonal only up to a relative 1.5e-5 to 1.2e-4 (largest off-diagonal of
``B B^T`` over its largest diagonal), against 8e-8 to 6e-7 on the CPU.

Every jnp matrix product of the package on float32 or complex64 data uses
:data:`FULL_PRECISION` (a test walks the traced programs of the hot paths and fails on
any that does not). Integer and float64 products are exact or full already; the example
models of :mod:`optinc_jax.network` (ResNet, Llama) keep the backend's default, as deep
learning does.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["FULL_PRECISION", "full_matmul"]

FULL_PRECISION = jax.lax.Precision.HIGHEST
"""The ``precision`` of every float32 matrix product of the package: full float32."""


def full_matmul(a: ArrayLike, b: ArrayLike) -> jax.Array:
    """``a @ b`` (``jnp.matmul`` broadcasting) at :data:`FULL_PRECISION`.

    Args:
        a: ``[..., m, k]`` (or ``[k]``).
        b: ``[..., k, n]`` (or ``[k]``).

    Returns:
        ``[..., m, n]``, as ``jnp.matmul`` gives it, every product in full precision.

    Examples:
        >>> import jax.numpy as jnp
        >>> full_matmul(jnp.array([[1.0, 2.0]]), jnp.array([[3.0], [4.0]]))
        Array([[11.]], dtype=float32)
    """
    return jnp.matmul(a, b, precision=FULL_PRECISION)
