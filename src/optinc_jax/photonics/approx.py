"""Diagonal x unitary approximation of weight matrices (the paper's eq. 4-6).

A square ``k x k`` block ``W_b`` with SVD ``W_b = P S Q^T`` needs two meshes (``P``, ``Q``)
and a diagonal. Replacing it by ``diag(d) U`` with one orthogonal ``U`` saves one mesh:
``U = P Q^T`` is the polar factor of ``W_b`` (the orthogonal matrix closest to it) and
``d_i = <u_i, w_i>`` is the least-squares diagonal for that ``U`` (rows of ``U`` have unit
norm). ``side="right"`` uses ``W_b ~ U diag(d)`` with ``d_j = <u^j, w^j>`` (columns), i.e.
the attenuators sit on the block's inputs instead of its outputs.

An ``M x N`` matrix (``out x in``) is cut into ``b = ceil(max(M, N) / k)`` square blocks of
size ``k = min(M, N)``: a tall matrix (``M > N``) into blocks stacked vertically (their
outputs are concatenated), a wide one into blocks side by side (their outputs are summed).
When ``max(M, N)`` is not a multiple of ``k`` the last block is zero padded. That padded
block always carries its diagonal on the padded side (on its outputs in a tall matrix, on
its inputs in a wide one), whatever ``side`` says: its padded rows or columns then get
``d = 0``, the approximation is exactly zero there, nothing is lost when the padding is
cropped, and the projection stays idempotent. The block costs the same MZIs either way.
"""

import functools
import math
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import (
    require_choice,
    require_finite_array,
    require_floating_dtype,
    require_int,
)

Side = Literal["left", "right"]
"""Where the diagonal of a block sits: ``"left"`` (its outputs) or ``"right"`` (its inputs)."""


class DiagUnitaryFactors(NamedTuple):
    """Factors of the diagonal x unitary approximation of one ``M x N`` matrix.

    Attributes:
        diag: ``[b, k]`` diagonal of each block (signed; attenuation plus a sign).
        unitary: ``[b, k, k]`` real orthogonal factor of each block.
        diag_left: ``[b]`` bool; ``True`` where block ``j`` is ``diag(d_j) @ U_j``
            (attenuators on the block's outputs), ``False`` where it is
            ``U_j @ diag(d_j)`` (attenuators on its inputs).
    """

    diag: jax.Array
    unitary: jax.Array
    diag_left: jax.Array


def _block_layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """Return ``(b, k)`` for a matrix shape, validating it (static)."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"expected a non-empty 2-D matrix of shape [M, N], got shape {shape}")
    k = min(shape)
    return math.ceil(max(shape) / k), k


def partition_blocks(W: ArrayLike) -> jax.Array:
    """Cut a matrix into zero-padded square blocks.

    Args:
        W: ``[M, N]`` matrix (``out x in``).

    Returns:
        ``[b, k, k]`` blocks, ``k = min(M, N)``, ``b = ceil(max(M, N) / k)``: block ``j`` is
        ``W[j k:(j + 1) k, :]`` for a tall or square matrix, ``W[:, j k:(j + 1) k]`` for a
        wide one, the last block padded with zeros.

    Raises:
        ValueError: If ``W`` is not a non-empty 2-D matrix.

    Examples:
        >>> partition_blocks(jnp.arange(6.0).reshape(2, 3))
        Array([[[0., 1.],
                [3., 4.]],
        <BLANKLINE>
               [[2., 0.],
                [5., 0.]]], dtype=float32)
    """
    W = jnp.asarray(W)
    b, k = _block_layout(W.shape)
    rows, cols = W.shape
    if rows >= cols:
        return jnp.pad(W, ((0, b * k - rows), (0, 0))).reshape(b, k, k)
    return jnp.pad(W, ((0, 0), (0, b * k - cols))).reshape(k, b, k).transpose(1, 0, 2)


def merge_blocks(blocks: ArrayLike, shape: tuple[int, int]) -> jax.Array:
    """Reassemble blocks cut by :func:`partition_blocks` and crop the padding.

    Args:
        blocks: ``[b, k, k]`` blocks.
        shape: ``(M, N)`` of the matrix they were cut from.

    Returns:
        ``[M, N]`` matrix.

    Raises:
        ValueError: If ``blocks`` does not have the shape ``partition_blocks`` gives for
            ``shape``.

    Examples:
        >>> W = jnp.arange(15.0).reshape(5, 3)
        >>> bool((merge_blocks(partition_blocks(W), W.shape) == W).all())
        True
    """
    blocks = jnp.asarray(blocks)
    shape = tuple(shape)
    b, k = _block_layout(shape)
    if blocks.shape != (b, k, k):
        raise ValueError(
            f"blocks of shape {blocks.shape} do not tile a matrix of shape {shape}: "
            f"expected blocks of shape {(b, k, k)}"
        )
    rows, cols = shape
    if rows >= cols:
        return blocks.reshape(b * k, k)[:rows]
    return blocks.transpose(1, 0, 2).reshape(k, b * k)[:, :cols]


def _diag_left(shape: tuple[int, int], side: Side) -> np.ndarray:
    """``[b]`` flags: which blocks carry their diagonal on the left (outputs)."""
    b, k = _block_layout(shape)
    flags = np.full(b, side == "left")
    if b * k != max(shape):
        flags[-1] = shape[0] > shape[1]  # the padding's side: rows if tall, columns if wide
    return flags


def _polar(A: jax.Array) -> jax.Array:
    """``[..., k, k]`` orthogonal polar factor ``P Q^T`` of ``A = P S Q^T`` (batched SVD)."""
    P, _, Qt = jnp.linalg.svd(A, full_matrices=False)
    return full_matmul(P, Qt)


@jax.jit
def _factors(W: jax.Array, diag_left: jax.Array, refine_steps: jax.Array) -> DiagUnitaryFactors:
    """Jitted core of :func:`diag_unitary_factors` (no value checks).

    ``diag_left`` and ``refine_steps`` are traced rather than static so that one compiled
    function per shape and dtype serves both sides and every number of steps.
    """
    blocks = partition_blocks(W)
    # A right-side block B ~ U diag(d) is the transpose of B^T ~ diag(d) U^T.
    left = diag_left[:, None, None]
    A = jnp.where(left, blocks, blocks.mT)

    def diag_for(U: jax.Array) -> jax.Array:
        return jnp.sum(U * A, axis=-1)

    def refine(_: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        d, _U = carry
        U = _polar(d[:, :, None] * A)  # argmin_U ||A - diag(d) U|| (orthogonal Procrustes)
        return diag_for(U), U

    U = _polar(A)
    d, U = jax.lax.fori_loop(0, refine_steps, refine, (diag_for(U), U))
    return DiagUnitaryFactors(d, jnp.where(left, U, U.mT), diag_left)


@functools.partial(jax.jit, static_argnames="shape")
def _to_matrix(factors: DiagUnitaryFactors, shape: tuple[int, int]) -> jax.Array:
    """Jitted core of :func:`factors_to_matrix` (no value checks)."""
    d, U, left = factors
    blocks = jnp.where(left[:, None, None], d[:, :, None] * U, U * d[:, None, :])
    return merge_blocks(blocks, shape)


def _check_inputs(W: ArrayLike, side: object, refine_steps: object) -> jax.Array:
    """Validate the public arguments; check values only when ``W`` is concrete."""
    W = jnp.asarray(W)
    _block_layout(W.shape)
    require_floating_dtype("W", W)
    require_choice("side", side, get_args(Side))
    require_int("refine_steps", refine_steps, 0)
    require_finite_array("W", W)
    return W


def diag_unitary_factors(
    W: ArrayLike, *, side: Side = "left", refine_steps: int = 0
) -> DiagUnitaryFactors:
    """Factor each square block of a matrix into a diagonal and an orthogonal matrix.

    For each block ``W_b`` (``side="left"``): ``U = polar(W_b)``, then
    ``d_i = <u_i, w_i>``. Each refinement step (alternating least squares) sets
    ``U = polar(diag(d) W_b)``, the orthogonal ``argmin_U ||W_b - diag(d) U||_F``, then
    ``d`` again; ``||W_b - diag(d) U||_F`` never increases. ``side="right"`` is the same on
    ``W_b^T``. All blocks go through one batched SVD.

    Args:
        W: ``[M, N]`` real matrix (``out x in``), float32 or float64.
        side: ``"left"`` for ``diag(d) @ U`` (attenuators on the outputs), ``"right"`` for
            ``U @ diag(d)`` (on the inputs). A zero-padded last block uses its padded side
            (see the module docstring).
        refine_steps: Alternating-least-squares steps after the closed-form start.

    Returns:
        The factors, ``b = ceil(max(M, N) / k)`` blocks of size ``k = min(M, N)``.

    Raises:
        ValueError: If ``W`` is not a non-empty real floating-point 2-D matrix, holds NaN or
            inf (checked when concrete), ``side`` is not ``"left"`` or ``"right"``, or
            ``refine_steps`` is not an integer ``>= 0``.

    Examples:
        >>> factors = diag_unitary_factors(jnp.diag(jnp.array([2.0, -3.0])))
        >>> factors.diag
        Array([[2., 3.]], dtype=float32)
        >>> factors.unitary
        Array([[[ 1.,  0.],
                [ 0., -1.]]], dtype=float32)
    """
    W = _check_inputs(W, side, refine_steps)
    return _factors(W, _diag_left(W.shape, side), refine_steps)


def factors_to_matrix(factors: DiagUnitaryFactors, shape: tuple[int, int]) -> jax.Array:
    """Build the approximated matrix from its factors.

    Args:
        factors: Output of :func:`diag_unitary_factors`.
        shape: ``(M, N)`` of the approximated matrix.

    Returns:
        ``[M, N]`` matrix: each block ``diag(d) @ U`` or ``U @ diag(d)``, merged and cropped.

    Raises:
        ValueError: If the factors' shapes do not fit ``shape``.

    Examples:
        >>> W = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
        >>> approx = factors_to_matrix(diag_unitary_factors(W), W.shape)
        >>> bool(jnp.allclose(approx, approx_diag_unitary(W)))
        True
    """
    b, k = _block_layout(tuple(shape))
    d, U, left = (jnp.asarray(x) for x in factors)
    if d.shape != (b, k) or U.shape != (b, k, k) or left.shape != (b,):
        raise ValueError(
            f"factors with diag {d.shape}, unitary {U.shape}, diag_left {left.shape} do not "
            f"fit shape {tuple(shape)}: expected {(b, k)}, {(b, k, k)}, {(b,)}"
        )
    return _to_matrix(DiagUnitaryFactors(d, U, left), tuple(shape))


def approx_diag_unitary(W: ArrayLike, *, side: Side = "left", refine_steps: int = 0) -> jax.Array:
    """Project a weight matrix onto block diagonal x orthogonal form.

    With ``B_j`` the ``k x k`` blocks of :func:`partition_blocks`, this approximately solves::

        argmin over d_j in R^k, U_j with U_j^T U_j = I of  sum_j ||B_j - diag(d_j) U_j||_F^2

    exactly in ``d_j`` for the returned ``U_j``; ``U_j`` starts at the orthogonal matrix
    closest to ``B_j`` (the paper's closed form) and none of the ``refine_steps``
    alternating steps raises the error (``side="right"``: ``U_j diag(d_j)``; a zero-padded
    last block always uses its padded side, see the module docstring). The map is
    idempotent: a matrix already of that form (zero in any padding) is returned unchanged,
    up to float error. Jittable with ``side`` and ``refine_steps`` static; write for one
    matrix and ``jax.vmap`` for a batch.

    Args:
        W: ``[M, N]`` real matrix (``out x in``), float32 or float64.
        side: ``"left"`` (``diag(d) @ U``, default) or ``"right"`` (``U @ diag(d)``).
        refine_steps: Alternating-least-squares steps (``0``: the paper's closed form).

    Returns:
        ``[M, N]`` approximated matrix, same dtype as ``W``.

    Raises:
        ValueError: If ``W`` is not a non-empty real floating-point 2-D matrix, holds NaN or
            inf (checked when concrete), ``side`` is not ``"left"`` or ``"right"``, or
            ``refine_steps`` is not an integer ``>= 0``.

    Examples:
        >>> W = jnp.array([[0.0, 2.0], [-3.0, 0.0]])  # diag(2, 3) @ a permutation: exact
        >>> bool(jnp.allclose(approx_diag_unitary(W), W))
        True
        >>> jnp.round(5 * approx_diag_unitary(jnp.array([[1.0, 1.0], [0.0, 1.0]])))
        Array([[ 6.,  3.],
               [-2.,  4.]], dtype=float32)
    """
    W = _check_inputs(W, side, refine_steps)
    return _to_matrix(_factors(W, _diag_left(W.shape, side), refine_steps), W.shape)


def diag_unitary_residual(W: ArrayLike, *, side: Side = "left", refine_steps: int = 0) -> jax.Array:
    """How far a matrix is from block diagonal x orthogonal form, relative to its size.

    ``||W - approx_diag_unitary(W)||_F / ||W||_F`` (:func:`approx_diag_unitary` with the
    same ``side`` and ``refine_steps``); 0 for the zero matrix. A matrix already of that
    form gives float rounding: the check that a projected network really is what the
    hardware implements. Measured on the 8b8s preset's final networks (README, "Training
    recipe"): 8e-7 to 1.1e-6 for the approximated matrices projected in float32, 5e-5 to
    1.0e-4 with the polar factor's product at TF32 (a GPU's default precision before
    :mod:`optinc_jax.photonics.precision`).

    Args:
        W: ``[M, N]`` real matrix (``out x in``), float32 or float64.
        side: ``"left"`` (``diag(d) @ U``) or ``"right"`` (``U @ diag(d)``).
        refine_steps: Alternating-least-squares steps of the projection.

    Returns:
        Scalar, the dtype of ``W``.

    Raises:
        ValueError: as :func:`approx_diag_unitary`.

    Examples:
        >>> float(diag_unitary_residual(jnp.array([[0.0, 2.0], [-3.0, 0.0]]))) < 1e-6
        True
        >>> round(float(diag_unitary_residual(jnp.array([[1.0, 1.0], [0.0, 1.0]]))), 4)
        0.3651
    """
    W = _check_inputs(W, side, refine_steps)  # once: the projection below is the core's
    projected = _to_matrix(_factors(W, _diag_left(W.shape, side), refine_steps), W.shape)
    return relative_residual(W, projected)


def relative_residual(W: ArrayLike, approx: ArrayLike) -> jax.Array:
    """How far ``approx`` is from ``W``, relative to the size of ``W``.

    ``||W - approx||_F / ||W||_F``; 0 for the zero ``W`` (:func:`diag_unitary_residual`
    is this with ``approx`` the projection of ``W``). Jittable.

    Args:
        W: ``[M, N]`` real matrix, float32 or float64.
        approx: its approximation, the same shape.

    Returns:
        Scalar, the dtype of ``W``.

    Raises:
        ValueError: if the shapes differ.

    Examples:
        >>> round(float(relative_residual(jnp.array([[3.0, 4.0]]), jnp.array([[3.0, 3.0]]))), 6)
        0.2
        >>> float(relative_residual(jnp.zeros((2, 2)), jnp.ones((2, 2))))
        0.0
    """
    W, approx = jnp.asarray(W), jnp.asarray(approx)
    if W.shape != approx.shape:
        raise ValueError(f"approx has shape {approx.shape}; expected the shape of W, {W.shape}")
    error = jnp.linalg.norm(W - approx)
    norm = jnp.linalg.norm(W)
    return jnp.where(norm > 0, error / jnp.where(norm > 0, norm, 1), 0).astype(W.dtype)
