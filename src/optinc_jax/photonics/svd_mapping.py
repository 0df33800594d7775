"""SVD mapping of a real weight matrix onto two MZI meshes and a column of attenuators.

A real ``W [M, N]`` (outputs x inputs) is factored as ``W = U S V^T`` and realised
optically, light travelling left to right::

    x [N] --> mesh V^T (N modes) --> attenuators --> mesh U (M modes) --> x gain --> y [M]

- ``V^T`` and ``U`` are real rectangular meshes
  (:class:`optinc_jax.photonics.mesh.OrthogonalPhases`).
- The first ``k = min(M, N)`` modes leaving ``V^T`` pass one MZI each, used as a variable
  attenuator with amplitude transmission ``attenuation[i] = s_i / s_max`` in ``[0, 1]``.
  If ``N > M`` the other ``N - M`` modes are dropped; if ``M > N`` the ``M - N`` extra
  input modes of ``U`` carry no light.
- Passive optics cannot amplify, so the largest singular value ``gain = s_max`` is applied
  outside the optics (e.g. in the receiver electronics).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.decompose import decompose_orthogonal
from optinc_jax.photonics.mesh import OrthogonalPhases, apply_orthogonal, orthogonal_matrix
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import require_finite_array


class SVDMeshMapping(NamedTuple):
    """Mesh parameters realising ``W = gain * U[:, :k] diag(attenuation) V^T[:k, :]``.

    Attributes:
        output_mesh: Real mesh of ``U`` (``M`` modes).
        attenuation: Amplitude transmissions ``[min(M, N)]`` in ``[0, 1]``, sorted in
            decreasing order (singular values over ``gain``).
        input_mesh: Real mesh of ``V^T`` (``N`` modes).
        gain: Scalar electronic gain ``s_max`` (largest singular value; 0 for ``W = 0``).
    """

    output_mesh: OrthogonalPhases
    attenuation: jax.Array
    input_mesh: OrthogonalPhases
    gain: jax.Array


def map_matrix_svd(w: ArrayLike) -> SVDMeshMapping:
    """Map a real matrix onto meshes and attenuators by its SVD.

    Rank-deficient matrices give zero attenuations (those modes are blocked). For
    ``W = 0`` the gain and all attenuations are 0 (no light reaches the output) and the
    meshes are those of the orthogonal factors the SVD returns; no NaN arises.

    Args:
        w: Real matrix ``[M, N]`` (outputs x inputs), ``M, N >= 1``; float32, or float64
            with x64 enabled.

    Returns:
        An :class:`SVDMeshMapping` with ``reconstruct_matrix(mapping) ~ w`` (to about
        ``1e-5`` relative in float32).

    Raises:
        ValueError: If ``w`` is not a non-empty 2-D real array, contains NaN or inf, or
            its largest singular value overflows its dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[3.0, 0.0], [0.0, -1.5], [0.0, 0.0]])
        >>> mapping = map_matrix_svd(w)
        >>> float(mapping.gain), mapping.attenuation.tolist()
        (3.0, [1.0, 0.5])
        >>> bool(jnp.allclose(reconstruct_matrix(mapping), w, atol=1e-5))
        True
    """
    w = jnp.asarray(w)  # the dtype JAX will compute in (x64 setting applied)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"w must be a non-empty [M, N] matrix, got shape {w.shape}")
    if jnp.issubdtype(w.dtype, jnp.complexfloating):
        raise ValueError(f"w must be real, got dtype {w.dtype}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        w = w.astype(jnp.result_type(float))
    require_finite_array("w", w)
    host = np.asarray(w)
    # A one-off factorisation of concrete values: LAPACK on the host, in the dtype of w.
    # The singular values come sorted in decreasing order and IEEE division is monotone and
    # exact for s_max / s_max, so the attenuations lie in [0, 1] with the first exactly 1.
    # Scaled by a power of two (exact) before the SVD, so entries near the float maximum
    # (3e38 in float32) do not overflow inside LAPACK; the scale returns in the gain.
    _, exponent = np.frexp(np.max(np.abs(host)))
    u, s, vt = np.linalg.svd(np.ldexp(host, -int(exponent)), full_matrices=True)
    attenuation = s / s[0] if s[0] > 0 else np.zeros_like(s)
    gain = np.ldexp(np.float64(s[0]), int(exponent))
    if gain > np.finfo(host.dtype).max:
        raise ValueError(
            f"w's largest singular value, {gain:.3e}, overflows {host.dtype}; scale w down "
            "(the gain is one global factor)"
        )
    gain = gain.astype(host.dtype)
    return SVDMeshMapping(
        output_mesh=decompose_orthogonal(u),
        attenuation=jnp.asarray(attenuation),
        input_mesh=decompose_orthogonal(vt),
        gain=jnp.asarray(gain),
    )


def _check_mapping(mapping: SVDMeshMapping) -> tuple[int, int, int]:
    m = jnp.shape(mapping.output_mesh.output_sign)[-1]
    n = jnp.shape(mapping.input_mesh.output_sign)[-1]
    k = min(m, n)
    if jnp.shape(mapping.attenuation) != (k,) or jnp.shape(mapping.gain) != ():
        raise ValueError(
            f"an SVD mapping between N={n} inputs and M={m} outputs needs attenuation of "
            f"shape ({k},) and a scalar gain, got {jnp.shape(mapping.attenuation)} and "
            f"{jnp.shape(mapping.gain)}"
        )
    return m, n, k


@jax.jit
def reconstruct_matrix(mapping: SVDMeshMapping) -> jax.Array:
    """The matrix ``W [M, N]`` implemented by an SVD mesh mapping.

    Args:
        mapping: An :class:`SVDMeshMapping`.

    Returns:
        ``gain * U[:, :k] diag(attenuation) V^T[:k, :]``, real ``[M, N]``.

    Raises:
        ValueError: If the parameter shapes are inconsistent.
    """
    _, _, k = _check_mapping(mapping)
    u = orthogonal_matrix(mapping.output_mesh)
    vt = orthogonal_matrix(mapping.input_mesh)
    return mapping.gain * full_matmul(u[:, :k] * mapping.attenuation[None, :], vt[:k, :])


@jax.jit
def apply_svd_mapping(mapping: SVDMeshMapping, x: ArrayLike) -> jax.Array:
    """Propagate light through the two meshes and attenuators: ``y[b] = W @ x[b]``.

    Args:
        mapping: An :class:`SVDMeshMapping` for ``W [M, N]``.
        x: Input amplitudes ``[..., N]`` (e.g. ``[batch, N]``).

    Returns:
        Output amplitudes ``[..., M]`` (after the electronic gain).

    Raises:
        ValueError: If the parameter shapes are inconsistent or ``x`` has the wrong size.

    Examples:
        >>> import jax.numpy as jnp
        >>> mapping = map_matrix_svd(jnp.array([[1.0, 2.0]]))
        >>> apply_svd_mapping(mapping, jnp.array([[1.0, 1.0]])).round(5)
        Array([[3.]], dtype=float32)
    """
    m, n, k = _check_mapping(mapping)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"x must have shape [..., {n}] for a matrix with N={n}, got {x.shape}")
    z = apply_orthogonal(mapping.input_mesh, x)[..., :k]
    z = z * mapping.attenuation.reshape((1,) * (z.ndim - 1) + (k,))
    z = jnp.concatenate([z, jnp.zeros((*z.shape[:-1], m - k), z.dtype)], axis=-1)
    return mapping.gain * apply_orthogonal(mapping.output_mesh, z)
