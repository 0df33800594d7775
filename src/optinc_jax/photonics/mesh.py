"""Rectangular (Clements) MZI meshes: phases -> unitary, and light propagation.

Layout for ``n`` modes: ``n`` columns; column ``c`` (0-based) holds MZIs on the mode pairs
``(m, m + 1)`` for ``m = c % 2, c % 2 + 2, ...`` with ``m + 1 < n``, i.e. even columns on
``(0, 1), (2, 3), ...`` and odd columns on ``(1, 2), (3, 4), ...``, for ``n (n - 1) / 2``
MZIs in all (none for ``n = 1``). Parameter arrays list the MZIs column by column,
increasing ``m`` inside a column (see :func:`clements_layout`). Light enters column 0
first and leaves through a screen of ``n`` output phase shifters, so the mesh implements

    U = diag(exp(i * output_phase)) @ T_col(n-1) @ ... @ T_col(0),

with ``T_col(c)`` the identity-padded product of the 2 x 2 MZI matrices of column ``c``.

Where the MZI convention lives: not here. Every forward map is built in three steps,
``transfers = transfer(theta, phi)`` (``[n (n - 1) / 2, 2, 2]``, one matrix per MZI),
then :func:`propagate_columns`, then the output screen. ``transfer`` defaults to
:func:`optinc_jax.photonics.mzi.mzi_transfer`, the one definition of the convention; the
real (orthogonal) meshes use :func:`optinc_jax.photonics.mzi.givens_rotation`
(``mzi_transfer(theta, 0)``) and a screen of ``+-1`` output signs. Another MZI model (lossy,
imbalanced couplers) is one function with the signature of ``mzi_transfer``, passed as
``clements_unitary(phases, transfer=model)`` or ``apply_clements(phases, x,
transfer=model)``.

The forward maps never build an ``n x n`` matrix per MZI: :func:`propagate_columns`
applies the mesh column by column to the light (``lax.scan`` over pairs of columns), each
column being one vectorised 2 x 2 update of all its mode pairs. ``clements_unitary``
applies the mesh to the identity. All functions take one phase set; stack phase sets and
``jax.vmap`` for batches.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.mzi import givens_rotation, mzi_transfer
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import require_int

Transfer = Callable[[jax.Array, jax.Array], jax.Array]
"""An MZI model: ``(theta [...], phi [...]) -> [..., 2, 2]``, like ``mzi_transfer``."""


class ClementsPhases(NamedTuple):
    """Phases of an ``n``-mode rectangular complex mesh (all in radians).

    Attributes:
        theta: Internal MZI angles ``[n (n - 1) / 2]``, in the layout order of
            :func:`clements_layout`.
        phi: External MZI phases ``[n (n - 1) / 2]``, same order.
        output_phase: Output phase screen ``[n]``; ``n`` is read from its last dimension.
    """

    theta: jax.Array
    phi: jax.Array
    output_phase: jax.Array


class OrthogonalPhases(NamedTuple):
    """Parameters of an ``n``-mode rectangular real (orthogonal) mesh.

    Attributes:
        theta: Givens rotation angles in radians ``[n (n - 1) / 2]``, in the layout order of
            :func:`clements_layout`.
        output_sign: Output sign screen ``[n]`` of ``+1.0`` / ``-1.0`` (a float array; it is
            a phase screen restricted to 0 and pi). ``n`` is read from its last dimension.
    """

    theta: jax.Array
    output_sign: jax.Array


def mzi_count(n: int) -> int:
    """Number of MZIs ``n (n - 1) / 2`` in an ``n``-mode rectangular mesh.

    Args:
        n: Number of modes, ``n >= 1``.

    Returns:
        The MZI count (0 for ``n = 1``).

    Raises:
        ValueError: If ``n`` is not a positive integer.

    Examples:
        >>> mzi_count(4)
        6
    """
    n = require_int("number of modes n", n, 1)
    return n * (n - 1) // 2


@functools.cache
def clements_layout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and upper mode of every MZI of an ``n``-mode mesh, in parameter order.

    Args:
        n: Number of modes, ``n >= 1``.

    Returns:
        ``(column, top_mode)``: two read-only int arrays ``[n (n - 1) / 2]``; MZI ``k``
        (the ``k``-th entry of ``theta`` / ``phi``) sits in column ``column[k]`` on the
        modes ``(top_mode[k], top_mode[k] + 1)``. Cached per ``n``.

    Raises:
        ValueError: If ``n`` is not a positive integer.

    Examples:
        >>> clements_layout(4)
        (array([0, 0, 1, 2, 2, 3]), array([0, 2, 1, 0, 2, 1]))
    """
    mzi_count(n)
    tops = [np.arange(c % 2, n - 1, 2) for c in range(n)]
    column = np.concatenate([np.full(len(t), c) for c, t in enumerate(tops)]).astype(int)
    top_mode = np.concatenate(tops).astype(int)
    column.flags.writeable = False
    top_mode.flags.writeable = False
    return column, top_mode


def _check_mesh(theta: jax.Array, screen: jax.Array, screen_name: str) -> int:
    """Validate the shapes of one phase set; return the number of modes ``n``."""
    if screen.ndim != 1 or screen.shape[0] < 1:
        raise ValueError(
            f"{screen_name} must have shape [n] with n >= 1, got shape {screen.shape} "
            "(vmap over stacked phase sets instead of passing a batch)"
        )
    n = screen.shape[0]
    expected = (mzi_count(n),)
    if theta.shape != expected:
        raise ValueError(
            f"theta has shape {theta.shape}, but {screen_name} of shape {screen.shape} "
            f"means n={n} modes, which needs theta of shape {expected}"
        )
    for name, value in (("theta", theta), (screen_name, screen)):
        if jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise ValueError(f"{name} must be real, got dtype {value.dtype}")
    return n


def _check_light(x: jax.Array, n: int) -> None:
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"x must have shape [..., {n}] for an {n}-mode mesh, got {x.shape}")


def _apply_column(coeffs: tuple[jax.Array, ...], x: jax.Array, offset: int) -> jax.Array:
    """Apply one column's MZIs to the mode pairs ``(offset + 2j, offset + 2j + 1)`` of ``x``.

    ``coeffs = (t00, t01, t10, t11)``, each ``[k]``, are the entries of the 2 x 2 transfer
    matrices of the ``k`` MZIs of the column; ``x`` is ``[n, ...]`` (modes first); the
    other modes pass unchanged.
    """
    k = coeffs[0].shape[0]
    if k == 0:
        return x
    rest = x.shape[1:]
    t00, t01, t10, t11 = (t.reshape((k,) + (1,) * len(rest)) for t in coeffs)
    pairs = x[offset : offset + 2 * k].reshape((k, 2, *rest))
    top, bottom = pairs[:, 0], pairs[:, 1]
    rotated = jnp.stack([t00 * top + t01 * bottom, t10 * top + t11 * bottom], axis=1)
    return jnp.concatenate(
        [x[:offset], rotated.reshape((2 * k, *rest)), x[offset + 2 * k :]], axis=0
    )


@jax.jit
def propagate_columns(transfers: ArrayLike, x: ArrayLike) -> jax.Array:
    """Send light through every MZI column of a rectangular mesh, column 0 first.

    The mesh's screen of output phases is not applied. Each column is one vectorised
    2 x 2 update of all its mode pairs, and the columns run in a ``lax.scan`` over pairs of
    columns: ``O(n^2)`` work per input vector, no ``n x n`` matrix per MZI.

    Args:
        transfers: ``[n (n - 1) / 2, 2, 2]``: the transfer matrix of every MZI, in the
            layout order of :func:`clements_layout` (e.g. ``mzi_transfer(theta, phi)`` or
            ``givens_rotation(theta)``), real or complex.
        x: Light ``[n, ...]`` with the modes on axis 0: a vector ``[n]``, or a matrix
            ``[n, k]`` whose columns are ``k`` input vectors (modes come first, so that
            ``propagate_columns(transfers, eye(n))`` is the mesh's matrix; move the mode
            axis of light ``[batch, n]`` to the front, as :func:`apply_clements` does).

    Returns:
        ``T_col(n-1) @ ... @ T_col(0) @ x``, shape of ``x``, dtype
        ``result_type(transfers, x)``; ``T_col(c)`` is the identity-padded product of the
        transfer matrices of column ``c``.

    Raises:
        ValueError: If ``x`` has no mode axis or ``transfers`` does not have the shape
            ``[n (n - 1) / 2, 2, 2]`` for ``n = x.shape[0]`` modes.

    Examples:
        >>> import jax.numpy as jnp
        >>> from optinc_jax.photonics.mzi import givens_rotation
        >>> cross = givens_rotation(jnp.array([jnp.pi / 2]))  # one MZI, 2 modes
        >>> propagate_columns(cross, jnp.array([1.0, 0.0])).round(6) + 0.0
        Array([0., 1.], dtype=float32)
    """
    transfers, x = jnp.asarray(transfers), jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape [n, ...] with n >= 1 modes first, got {x.shape}")
    n = x.shape[0]
    expected = (mzi_count(n), 2, 2)
    if transfers.shape != expected:
        raise ValueError(
            f"transfers must have shape {expected} (one 2 x 2 matrix per MZI of an {n}-mode "
            f"mesh, n = x.shape[0]), got {transfers.shape}"
        )
    dtype = jnp.result_type(transfers, x)
    x = x.astype(dtype)
    coeffs = tuple(transfers[:, i, j].astype(dtype) for i in (0, 1) for j in (0, 1))
    even, odd = n // 2, (n - 1) // 2  # MZIs in an even / odd column
    n_pairs = n // 2  # full (even, odd) column pairs; odd n leaves one even column
    split = n_pairs * (even + odd)

    def two_columns(light: jax.Array, column_pair: tuple[jax.Array, ...]) -> tuple:
        light = _apply_column(tuple(t[:even] for t in column_pair), light, 0)
        light = _apply_column(tuple(t[even:] for t in column_pair), light, 1)
        return light, None

    per_pair = tuple(t[:split].reshape(n_pairs, even + odd) for t in coeffs)
    x, _ = jax.lax.scan(two_columns, x, per_pair)
    return _apply_column(tuple(t[split:] for t in coeffs), x, 0)


def _screen(factors: jax.Array, x: jax.Array) -> jax.Array:
    """Multiply mode ``i`` (axis 0) of ``x [n, ...]`` by ``factors[i]`` (the output screen)."""
    return factors.reshape((-1,) + (1,) * (x.ndim - 1)) * x


def _mesh_transfers(phases: ClementsPhases, transfer: Transfer) -> jax.Array:
    """``transfer(theta, phi)``: the ``[n (n - 1) / 2, 2, 2]`` matrices of all MZIs."""
    if not callable(transfer):
        raise ValueError(
            f"transfer must be a function (theta, phi) -> [..., 2, 2], got {transfer!r}"
        )
    transfers = jnp.asarray(transfer(phases.theta, phases.phi))
    expected = (*phases.theta.shape, 2, 2)
    if transfers.shape != expected:
        raise ValueError(
            f"transfer(theta, phi) must return one 2 x 2 matrix per MZI, shape {expected}, "
            f"got {transfers.shape}"
        )
    return transfers


def _as_clements(phases: ClementsPhases) -> tuple[ClementsPhases, int]:
    phases = ClementsPhases(*(jnp.asarray(p) for p in phases))
    n = _check_mesh(phases.theta, phases.output_phase, "output_phase")
    if phases.phi.shape != phases.theta.shape:
        raise ValueError(
            f"phi has shape {phases.phi.shape}, expected the shape of theta "
            f"{phases.theta.shape} (n={n} modes)"
        )
    if jnp.issubdtype(phases.phi.dtype, jnp.complexfloating):
        raise ValueError(f"phi must be real, got dtype {phases.phi.dtype}")
    return phases, n


def _as_orthogonal(phases: OrthogonalPhases) -> tuple[OrthogonalPhases, int]:
    phases = OrthogonalPhases(*(jnp.asarray(p) for p in phases))
    return phases, _check_mesh(phases.theta, phases.output_sign, "output_sign")


def _batch_size(x: jax.Array) -> int:
    """Number of vectors in ``x [..., n]`` (static under jit)."""
    return math.prod(x.shape[:-1])


@functools.partial(jax.jit, static_argnames="transfer")
def apply_clements(
    phases: ClementsPhases, x: ArrayLike, *, transfer: Transfer = mzi_transfer
) -> jax.Array:
    """Propagate light through a complex rectangular mesh: ``y[b] = U @ x[b]``.

    The MZI matrices are ``transfer(theta, phi)``; they go through
    :func:`propagate_columns`, then the output screen. A batch of at least ``n`` vectors
    is sent through the mesh's matrix, built once that way (:func:`clements_unitary`) and
    applied as one matrix product (6.5x faster than propagating a ``[4096, 256]`` batch
    column by column on a 2-core CPU); smaller batches are propagated column by column.
    Both give ``U @ x`` to float rounding.

    Args:
        phases: One :class:`ClementsPhases` set for ``n`` modes.
        x: Input field amplitudes ``[..., n]`` (e.g. ``[batch, n]`` or ``[n]``), real or
            complex.
        transfer: The MZI model, ``(theta [m], phi [m]) -> [m, 2, 2]`` (default
            :func:`optinc_jax.photonics.mzi.mzi_transfer`, the ideal lossless MZI). It is
            static under ``jit``: pass the same function object each time (a new
            ``functools.partial`` or ``lambda`` compiles anew).

    Returns:
        Output amplitudes ``[..., n]``, complex (complex64, or complex128 with x64).

    Raises:
        ValueError: If the phase shapes do not match each other or ``x``, or ``transfer``
            does not return ``[m, 2, 2]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> bar = ClementsPhases(jnp.zeros(1), jnp.zeros(1), jnp.array([0.0, jnp.pi]))
        >>> apply_clements(bar, jnp.array([1.0, 1.0])).real.round(6)
        Array([ 1., -1.], dtype=float32)
    """
    phases, n = _as_clements(phases)
    x = jnp.asarray(x)
    _check_light(x, n)
    if _batch_size(x) >= n:
        unitary = clements_unitary(phases, transfer=transfer)
        return full_matmul(x.astype(jnp.result_type(unitary, x)), unitary.T)
    transfers = _mesh_transfers(phases, transfer)
    screen = jnp.exp(1j * phases.output_phase)
    dtype = jnp.result_type(transfers, screen, x)
    y = propagate_columns(transfers.astype(dtype), jnp.moveaxis(x.astype(dtype), -1, 0))
    return jnp.moveaxis(_screen(screen.astype(dtype), y), 0, -1)


@functools.partial(jax.jit, static_argnames="transfer")
def clements_unitary(phases: ClementsPhases, *, transfer: Transfer = mzi_transfer) -> jax.Array:
    """Unitary ``U [n, n]`` implemented by a complex rectangular mesh.

    ``U = diag(exp(i * output_phase)) @ propagate_columns(transfer(theta, phi), I)``:
    ``n`` vectorised column updates of the identity, ``O(n^3)`` work in all.

    Args:
        phases: One :class:`ClementsPhases` set for ``n`` modes (vmap for a batch).
        transfer: The MZI model, ``(theta [m], phi [m]) -> [m, 2, 2]`` (default
            :func:`optinc_jax.photonics.mzi.mzi_transfer`, the ideal lossless MZI); static
            under ``jit`` (see :func:`apply_clements`). ``U`` is unitary only if every
            ``transfer`` matrix is.

    Returns:
        Complex ``[n, n]`` (complex64, or complex128 for float64 phases): ``U[i, j]`` is the
        amplitude in output mode ``i`` for unit input in mode ``j``.

    Raises:
        ValueError: If the phase shapes do not match, or ``transfer`` does not return
            ``[m, 2, 2]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> cross = ClementsPhases(jnp.array([jnp.pi / 2]), jnp.zeros(1), jnp.zeros(2))
        >>> clements_unitary(cross).real.round(6) + 0.0
        Array([[ 0., -1.],
               [ 1.,  0.]], dtype=float32)
        >>> lossy = lambda theta, phi: 0.5 * mzi_transfer(theta, phi)  # -6 dB power per MZI
        >>> clements_unitary(cross, transfer=lossy).real.round(6) + 0.0
        Array([[ 0. , -0.5],
               [ 0.5,  0. ]], dtype=float32)
    """
    phases, n = _as_clements(phases)
    transfers = _mesh_transfers(phases, transfer)
    screen = jnp.exp(1j * phases.output_phase)
    dtype = jnp.result_type(transfers, screen)
    u = propagate_columns(transfers.astype(dtype), jnp.eye(n, dtype=dtype))
    return _screen(screen.astype(dtype), u)


@jax.jit
def apply_orthogonal(phases: OrthogonalPhases, x: ArrayLike) -> jax.Array:
    """Propagate light through a real rectangular mesh: ``y[b] = Q @ x[b]``.

    The MZI matrices are ``givens_rotation(theta)`` (``mzi_transfer(theta, 0)``); they go
    through :func:`propagate_columns`, then the sign screen. Batches of at least ``n``
    vectors go through the matrix built once, as in :func:`apply_clements`.

    Args:
        phases: One :class:`OrthogonalPhases` set for ``n`` modes.
        x: Input amplitudes ``[..., n]`` (e.g. ``[batch, n]``), real or complex.

    Returns:
        Output amplitudes ``[..., n]`` with the promoted dtype of ``x`` and the angles.

    Raises:
        ValueError: If the parameter shapes do not match each other or ``x``.

    Examples:
        >>> import jax.numpy as jnp
        >>> swap = OrthogonalPhases(jnp.array([jnp.pi / 2]), jnp.array([1.0, -1.0]))
        >>> apply_orthogonal(swap, jnp.array([1.0, 0.0])).round(6) + 0.0
        Array([ 0., -1.], dtype=float32)
    """
    phases, n = _as_orthogonal(phases)
    x = jnp.asarray(x)
    _check_light(x, n)
    dtype = jnp.result_type(phases.theta, x, float)
    if _batch_size(x) >= n:
        return full_matmul(x.astype(dtype), orthogonal_matrix(phases).astype(dtype).T)
    transfers = givens_rotation(phases.theta).astype(dtype)
    y = propagate_columns(transfers, jnp.moveaxis(x.astype(dtype), -1, 0))
    return jnp.moveaxis(_screen(phases.output_sign.astype(dtype), y), 0, -1)


@jax.jit
def orthogonal_matrix(phases: OrthogonalPhases) -> jax.Array:
    """Orthogonal matrix ``Q [n, n]`` implemented by a real rectangular mesh.

    ``Q = diag(output_sign) @ propagate_columns(givens_rotation(theta), I)``.

    Args:
        phases: One :class:`OrthogonalPhases` set for ``n`` modes (vmap for a batch).

    Returns:
        Real ``[n, n]`` with the floating dtype of ``theta``.

    Raises:
        ValueError: If the parameter shapes do not match.

    Examples:
        >>> import jax.numpy as jnp
        >>> orthogonal_matrix(OrthogonalPhases(jnp.zeros(1), jnp.array([1.0, -1.0]))) + 0.0
        Array([[ 1.,  0.],
               [ 0., -1.]], dtype=float32)
    """
    phases, n = _as_orthogonal(phases)
    dtype = jnp.result_type(phases.theta, float)
    transfers = givens_rotation(phases.theta).astype(dtype)
    q = propagate_columns(transfers, jnp.eye(n, dtype=dtype))
    return _screen(phases.output_sign.astype(dtype), q)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def random_clements_phases(
    key: jax.Array, n: int, dtype: jnp.dtype = jnp.float32
) -> ClementsPhases:
    """Random phases: ``theta ~ U[0, pi/2]``, ``phi, output_phase ~ U[0, 2 pi)`` (radians).

    These are uniform phases, not Haar-distributed unitaries (use a Haar sampler and
    :func:`optinc_jax.photonics.decompose.decompose_clements` for those).

    Args:
        key: A JAX PRNG key.
        n: Number of modes, ``n >= 1``.
        dtype: Real floating dtype of the phases.

    Returns:
        A :class:`ClementsPhases` for ``n`` modes.

    Raises:
        ValueError: If ``n`` is not a positive integer.
    """
    m = mzi_count(n)
    k_theta, k_phi, k_out = jax.random.split(key, 3)
    return ClementsPhases(
        theta=jax.random.uniform(k_theta, (m,), dtype, 0.0, jnp.pi / 2),
        phi=jax.random.uniform(k_phi, (m,), dtype, 0.0, 2 * jnp.pi),
        output_phase=jax.random.uniform(k_out, (n,), dtype, 0.0, 2 * jnp.pi),
    )


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def random_orthogonal_phases(
    key: jax.Array, n: int, dtype: jnp.dtype = jnp.float32
) -> OrthogonalPhases:
    """Random real mesh: ``theta ~ U[-pi, pi)`` (radians), independent fair ``+-1`` signs.

    Args:
        key: A JAX PRNG key.
        n: Number of modes, ``n >= 1``.
        dtype: Real floating dtype of the parameters.

    Returns:
        An :class:`OrthogonalPhases` for ``n`` modes.

    Raises:
        ValueError: If ``n`` is not a positive integer.
    """
    m = mzi_count(n)
    k_theta, k_sign = jax.random.split(key)
    return OrthogonalPhases(
        theta=jax.random.uniform(k_theta, (m,), dtype, -jnp.pi, jnp.pi),
        output_sign=jax.random.rademacher(k_sign, (n,), dtype),
    )
