"""Unitary / orthogonal matrix -> rectangular-mesh phases (Clements et al. 2016).

Clements nulling zeroes the lower-left triangle of ``U`` one anti-diagonal at a time:
on odd anti-diagonals by right-multiplying with ``T^-1`` (rotating two columns), on even
ones by left-multiplying with ``T`` (rotating two rows), each step choosing the MZI angles
that null one element while keeping the earlier zeros. What is left is a diagonal ``D``:

    L_k ... L_1 @ U @ R_1^-1 ... R_m^-1 = D.

The left MZIs are then moved through ``D`` with ``T^-1 D = D' T'`` (a 2 x 2 identity,
applied from the innermost one outwards), giving ``U = D_final @ T'_1 ... T'_k @ R_m ...
R_1``, which is the rectangular layout of :mod:`optinc_jax.photonics.mesh` after a fixed
(per ``n``) assignment of MZIs to mesh positions.

Where the MZI convention lives: in :func:`optinc_jax.photonics.mzi.mzi_transfer`. Every
nulling step computes its angles ``(theta, phi)`` from the two entries it nulls (the
inverse of the convention: :func:`_row_angles`, :func:`_column_angles`), records them,
and applies the matrix ``mzi_transfer(theta, phi)`` (row step) or its inverse
``mzi_transfer(theta, phi)^H`` (column step); the real case uses
:func:`optinc_jax.photonics.mzi.givens_rotation`. The recorded angles are therefore
exactly those of the matrices applied. The commutation ``T^-1 D = D' T'`` (in
:func:`_decompose_clements_core` and :func:`_decompose_orthogonal_core`) is a property of
this convention (external phase on the upper input arm), written out in closed form.
The decomposition targets the ideal, lossless MZI only: to see how another MZI model
(lossy, imbalanced couplers) distorts a target, decompose with the ideal convention and
evaluate the phases with ``clements_unitary(phases, transfer=model)``.

Implementation: the nulling schedule (which element, which pair, row or column step) and
the mesh position of every MZI are computed once per ``n`` with NumPy. The sweep is one
jitted loop nest (a ``lax.scan`` over pairs of anti-diagonals, each running a
``fori_loop`` of column steps then one of row steps, each step rotating two columns or two
rows in place). The commutation through ``D`` is a scan over the row steps (vectorised
outright in the real case, where ``D = diag(+-1)`` is unchanged by it). Decomposing a
256 x 256 unitary takes about 0.1 s in float64 on one CPU core after compilation
(``benchmarks/bench_mesh.py``).

The public functions validate concrete values (unitarity, NaN), so they are not
themselves jittable; the sweep inside is compiled once per shape and dtype.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.mesh import ClementsPhases, OrthogonalPhases, clements_layout, mzi_count
from optinc_jax.photonics.mzi import givens_rotation, mzi_transfer
from optinc_jax.validation import require_finite_array, require_real


class _NullingPlan(NamedTuple):
    """Static nulling schedule for ``n`` modes (NumPy int arrays)."""

    col_pair: np.ndarray  # [S_c] column steps: rotate columns (p, p + 1) ...
    col_row: np.ndarray  # [S_c] ... to null element (row, p)
    row_pair: np.ndarray  # [S_r] row steps: rotate rows (p, p + 1) ...
    row_col: np.ndarray  # [S_r] ... to null element (p + 1, col)
    segments: np.ndarray  # [n // 2, 4] per anti-diagonal pair: col start/len, row start/len
    order: np.ndarray  # [n (n - 1) / 2] step (column steps, then row steps) at each mesh position


@functools.cache
def _nulling_plan(n: int) -> _NullingPlan:
    col_pair, col_row, row_pair, row_col, segments = [], [], [], [], []
    for q in range(n // 2):
        i = 2 * q + 1  # odd anti-diagonal: column steps (Clements' i odd)
        segments.append([len(col_pair), i, len(row_pair), 0])
        for j in range(i):
            col_pair.append(i - 1 - j)
            col_row.append(n - 1 - j)
        i += 1  # even anti-diagonal: row steps
        if i <= n - 1:
            segments[-1][3] = i
            for j in range(1, i + 1):
                row_pair.append(n + j - i - 2)
                row_col.append(j - 1)
    # Light meets the column-step MZIs R_1 .. R_m first, then T'_k .. T'_1. Place each MZI
    # in the earliest mesh column of the right parity after the MZIs on its modes.
    column, top_mode = clements_layout(n)
    position = {(int(c), int(m)): k for k, (c, m) in enumerate(zip(column, top_mode, strict=True))}
    depth = np.zeros(n, dtype=int)
    slots = []
    for p in col_pair + row_pair[::-1]:
        c = max(depth[p], depth[p + 1])
        c += (c - p) % 2
        depth[p] = depth[p + 1] = c + 1
        slots.append(position[(int(c), p)])
    row_slots = slots[len(col_pair) :][::-1]  # back to sweep order of the row steps
    slots = np.array(slots[: len(col_pair)] + row_slots, dtype=int)
    assert np.array_equal(np.sort(slots), np.arange(mzi_count(n)))
    order = np.argsort(slots)
    as_int = functools.partial(np.array, dtype=np.int32)
    return _NullingPlan(
        as_int(col_pair),
        as_int(col_row),
        as_int(row_pair),
        as_int(row_col),
        np.array(segments, dtype=np.int32).reshape(-1, 4),
        as_int(order),
    )


def _row_angles(x: jax.Array, y: jax.Array, *, real: bool) -> jax.Array:
    """Angles of the row step that nulls ``y``: ``T(theta, phi) @ (x, y) = (*, 0)``.

    ``x, y`` are the entries of the target column in rows ``p, p + 1``. The second row of
    ``T @ (x, y)`` is ``e^{i phi} sin(theta) x + cos(theta) y``, zero for
    ``tan theta = |y| / |x|`` and ``e^{i phi} = -(y / |y|) / (x / |x|)``. Real case
    (``phi = 0``, ``T = givens_rotation(theta)``): ``theta = atan2(-y, x)``, of any sign.

    Returns:
        ``[theta, phi]`` (complex case) or ``[theta]`` (real case), real, in radians.
    """
    if real:
        return jnp.arctan2(-y, x)[None]
    return jnp.stack([jnp.arctan2(jnp.abs(y), jnp.abs(x)), jnp.angle(-y) - jnp.angle(x)])


def _column_angles(x: jax.Array, y: jax.Array, *, real: bool) -> jax.Array:
    """Angles of the column step that nulls ``x``: ``(x, y) @ T(theta, phi)^-1 = (0, *)``.

    ``x, y`` are the entries of the target row in columns ``p, p + 1``. With
    ``T^-1 = T^H``, the first entry of ``(x, y) @ T^H`` is
    ``e^{-i phi} cos(theta) x - sin(theta) y``, zero for ``tan theta = |x| / |y|`` and
    ``e^{i phi} = (x / |x|) / (y / |y|)``. Real case: ``theta = atan2(x, y)``.

    Returns:
        ``[theta, phi]`` (complex case) or ``[theta]`` (real case), real, in radians.
    """
    if real:
        return jnp.arctan2(x, y)[None]
    return jnp.stack([jnp.arctan2(jnp.abs(x), jnp.abs(y)), jnp.angle(x) - jnp.angle(y)])


def _transfer(angles: jax.Array, *, real: bool) -> jax.Array:
    """The MZI matrix ``[2, 2]`` of recorded step angles: the convention of :mod:`.mzi`."""
    return givens_rotation(angles[0]) if real else mzi_transfer(angles[0], angles[1])


def _sweep(u: jax.Array, *, real: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Clements nulling sweep of ``u [n, n]``.

    Each step computes its angles from the two entries it nulls (:func:`_column_angles`,
    :func:`_row_angles`), records them, and applies ``T = mzi_transfer(theta, phi)`` built
    from the recorded angles (``givens_rotation(theta)`` in the real case): row steps
    left-multiply two rows by ``T``, column steps right-multiply two columns by
    ``T^-1 = T^H``.

    Returns:
        ``(d, col_angles [S_c, 2], row_angles [S_r, 2])``: the diagonal left over and, for
        each step in sweep order, its ``(theta, phi)`` in radians (``[S, 1]``, ``theta``
        only, in the real case).
    """
    n = u.shape[0]
    plan = _nulling_plan(n)
    zero = jnp.int32(0)
    col_pair, col_row, row_pair, row_col = (
        jnp.asarray(a) for a in (plan.col_pair, plan.col_row, plan.row_pair, plan.row_col)
    )
    width = 1 if real else 2
    real_dtype = jnp.finfo(u.dtype).dtype

    # XLA updates the matrix in place only if every read of it feeds that step's update,
    # and it would recompute the step matrix for every updated element if it were fused
    # into the update. Building the step matrix from the angles read back from the record
    # buffer, behind an optimization barrier, avoids both (measured: 20 % faster at
    # n = 256 than building it straight from the angles).
    def record(records, s, angles):
        records = jax.lax.dynamic_update_slice(records, angles[None], (s, zero))
        return records, jax.lax.optimization_barrier(_transfer(records[s], real=real))

    def column_step(s, carry):
        m, records = carry
        p = col_pair[s]
        cols = jax.lax.dynamic_slice(m, (zero, p), (n, 2))
        pair = jax.lax.dynamic_index_in_dim(cols, col_row[s], 0, keepdims=False)
        records, t = record(records, s, _column_angles(pair[0], pair[1], real=real))
        inverse = jnp.conj(t).T  # T^-1 = T^H: T is unitary in this convention
        new = jnp.stack(
            [
                cols[:, 0] * inverse[0, 0] + cols[:, 1] * inverse[1, 0],
                cols[:, 0] * inverse[0, 1] + cols[:, 1] * inverse[1, 1],
            ],
            1,
        )
        return jax.lax.dynamic_update_slice(m, new, (zero, p)), records

    def row_step(s, carry):
        m, records = carry
        p = row_pair[s]
        rows = jax.lax.dynamic_slice(m, (p, zero), (2, n))
        pair = jax.lax.dynamic_index_in_dim(rows, row_col[s], 1, keepdims=False)
        records, t = record(records, s, _row_angles(pair[0], pair[1], real=real))
        new = jnp.stack(
            [t[0, 0] * rows[0] + t[0, 1] * rows[1], t[1, 0] * rows[0] + t[1, 1] * rows[1]]
        )
        return jax.lax.dynamic_update_slice(m, new, (p, zero)), records

    def diagonal_pair(carry, segment):
        m, col_records, row_records = carry
        col_start, col_len, row_start, row_len = segment
        m, col_records = jax.lax.fori_loop(
            col_start, col_start + col_len, column_step, (m, col_records)
        )
        if len(plan.row_pair):  # n = 2 has no row steps
            m, row_records = jax.lax.fori_loop(
                row_start, row_start + row_len, row_step, (m, row_records)
            )
        return (m, col_records, row_records), None

    carry = (
        u,
        jnp.zeros((len(plan.col_pair), width), real_dtype),
        jnp.zeros((len(plan.row_pair), width), real_dtype),
    )
    if n > 1:  # n = 1: nothing to null
        carry, _ = jax.lax.scan(diagonal_pair, carry, jnp.asarray(plan.segments))
    m, col_angles, row_angles = carry
    return jnp.diagonal(m), col_angles, row_angles


@jax.jit
def _decompose_clements_core(u: jax.Array) -> ClementsPhases:
    """Jitted core of :func:`decompose_clements` for a complex ``u [n, n]``."""
    n = u.shape[0]
    plan = _nulling_plan(n)
    d, col_angles, row_angles = _sweep(u, real=False)
    (col_theta, col_phi), (row_theta, row_phi) = col_angles.T, row_angles.T

    # Commute each left MZI through the diagonal, innermost (last) first, with the identity
    # T(theta, phi)^-1 diag(d1, d2) = diag(-e^{-i phi} d2, d2) T(theta, arg(-d1 / d2)),
    # a property of the mzi_transfer convention (tested in tests/test_decompose.py).
    # Only the phases of d matter (|d| = 1 for a unitary), so carry angles, kept in
    # [0, 2 pi) so that rounding errors do not grow with n.
    def commute(alpha, step):
        phi, p = step
        a1, a2 = alpha[p], alpha[p + 1]
        return alpha.at[p].set(jnp.mod(jnp.pi - phi + a2, 2 * jnp.pi)), a1 - a2 + jnp.pi

    alpha, row_phi_new = jax.lax.scan(
        commute, jnp.angle(d), (row_phi, jnp.asarray(plan.row_pair)), reverse=True
    )
    theta = jnp.concatenate([col_theta, row_theta])[plan.order]
    phi = jnp.concatenate([col_phi, row_phi_new])[plan.order]
    return ClementsPhases(theta, jnp.mod(phi, 2 * jnp.pi), jnp.mod(alpha, 2 * jnp.pi))


@jax.jit
def _decompose_orthogonal_core(q: jax.Array) -> OrthogonalPhases:
    """Jitted core of :func:`decompose_orthogonal` for a real ``q [n, n]``."""
    n = q.shape[0]
    plan = _nulling_plan(n)
    d, col_angles, row_angles = _sweep(q, real=True)
    sign = jnp.where(d >= 0, 1.0, -1.0).astype(q.dtype)
    col_theta, row_theta = col_angles[:, 0], row_angles[:, 0]
    # G(theta)^-1 diag(d1, d2) = diag(d1, d2) G(-d1 d2 theta) for d = +-1: D is unchanged
    # (a property of givens_rotation, tested in tests/test_decompose.py).
    p = jnp.asarray(plan.row_pair)
    row_theta = -sign[p] * sign[p + 1] * row_theta
    return OrthogonalPhases(jnp.concatenate([col_theta, row_theta])[plan.order], sign)


def _validated_square(matrix: ArrayLike, name: str) -> jax.Array:
    """Check shape and finiteness (concrete values); return ``matrix`` as an inexact array."""
    matrix = jnp.asarray(matrix)  # the dtype JAX will compute in (x64 setting applied)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{name} must be a square [n, n] matrix with n >= 1, got {matrix.shape}")
    if not jnp.issubdtype(matrix.dtype, jnp.inexact):
        matrix = matrix.astype(jnp.result_type(float))
    require_finite_array(name, matrix)
    return matrix


def _check_unitary(matrix: jax.Array, name: str, atol: float | None) -> None:
    n = matrix.shape[0]
    if atol is not None:
        atol = require_real("atol", atol, low=0.0)
    else:
        double = jnp.finfo(matrix.dtype).bits == 64
        atol = n * (1e-8 if double else 1e-4)
    host = np.asarray(matrix)
    deviation = float(np.max(np.abs(host.conj().T @ host - np.eye(n))))
    if not deviation <= atol:
        raise ValueError(
            f"{name} is not unitary: max|{name}^H {name} - I| = {deviation:.3e} exceeds the "
            f"tolerance atol = {atol:.3e}"
        )


def decompose_clements(u: ArrayLike, *, atol: float | None = None) -> ClementsPhases:
    """Phases of the rectangular mesh that implements the unitary ``u``.

    ``clements_unitary(decompose_clements(u))`` reproduces ``u`` to rounding error
    (max error about ``5e-15`` for a Haar-random unitary in float64 at ``n = 256``, about
    ``2e-6`` in complex64 at ``n = 64``). Phases are not unique; ``theta`` lies in
    ``[0, pi/2]`` and ``phi`` and ``output_phase`` in ``[0, 2 pi)``, all in radians.

    Args:
        u: Unitary ``[n, n]``, ``n >= 1``, complex or real (a real orthogonal matrix is
            decomposed as a complex one). complex64 / float32 give float32 phases,
            complex128 / float64 (with x64 enabled) give float64 phases.
        atol: Tolerance on ``max|u^H u - I|``. Defaults to ``n * 1e-8`` for 64-bit and
            ``n * 1e-4`` for 32-bit inputs; a finite number ``>= 0`` if given.

    Returns:
        A :class:`optinc_jax.photonics.mesh.ClementsPhases` for ``n`` modes.

    Raises:
        ValueError: If ``u`` is not square, contains NaN or inf, or is not unitary within
            ``atol`` (the message gives the deviation and the tolerance), or ``atol`` is
            not a finite number ``>= 0``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from optinc_jax.photonics.mesh import clements_unitary
        >>> u = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        >>> phases = decompose_clements(u)
        >>> bool(jnp.allclose(clements_unitary(phases), u, atol=1e-6))
        True
    """
    u = _validated_square(u, "u")
    _check_unitary(u, "u", atol)
    complex_dtype = jnp.result_type(u.dtype, jnp.complex64)
    return _decompose_clements_core(u.astype(complex_dtype))


def decompose_orthogonal(q: ArrayLike, *, atol: float | None = None) -> OrthogonalPhases:
    """Givens angles and output signs of the real mesh that implements ``q``.

    ``orthogonal_matrix(decompose_orthogonal(q))`` reproduces ``q`` (``det q = +1`` or
    ``-1``) to rounding error. Angles are in radians in ``[-pi, pi]``.

    Args:
        q: Real orthogonal ``[n, n]``, ``n >= 1`` (float32, or float64 with x64 enabled).
        atol: Tolerance on ``max|q^T q - I|``. Defaults to ``n * 1e-8`` for float64 and
            ``n * 1e-4`` for float32; a finite number ``>= 0`` if given.

    Returns:
        An :class:`optinc_jax.photonics.mesh.OrthogonalPhases` for ``n`` modes.

    Raises:
        ValueError: If ``q`` is complex, not square, contains NaN or inf, or is not
            orthogonal within ``atol`` (the message gives the deviation and the tolerance),
            or ``atol`` is not a finite number ``>= 0``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from optinc_jax.photonics.mesh import orthogonal_matrix
        >>> q = jnp.array([[0.0, -1.0], [1.0, 0.0]])
        >>> bool(jnp.allclose(orthogonal_matrix(decompose_orthogonal(q)), q, atol=1e-6))
        True
    """
    q = _validated_square(q, "q")
    if jnp.issubdtype(q.dtype, jnp.complexfloating):
        raise ValueError(f"q must be real, got dtype {q.dtype}; use decompose_clements")
    _check_unitary(q, "q", atol)
    return _decompose_orthogonal_core(q)
