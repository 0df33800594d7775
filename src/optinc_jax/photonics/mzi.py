r"""Mach-Zehnder interferometer (MZI): the 2 x 2 building block of every mesh.

This module is the one place where the MZI convention is written down. Everything else is
built from :func:`mzi_transfer`: the complex meshes of :mod:`optinc_jax.photonics.mesh`
apply it to their phases and propagate the resulting 2 x 2 matrices with
:func:`optinc_jax.photonics.mesh.propagate_columns`; the real meshes use
:func:`givens_rotation`, which is ``mzi_transfer(theta, 0)``; and the decomposition of
:mod:`optinc_jax.photonics.decompose` applies ``mzi_transfer`` (or its inverse) at every
nulling step.

One MZI acts on two neighbouring waveguide modes ``(m, m + 1)``: an external phase
shifter ``phi`` on the upper input arm, then the interferometer proper (two 50:50 couplers
around the internal phase shifter) that sets the splitting angle ``theta``. Inputs are on
the left, outputs on the right::

                external        internal (sets theta)
      in m   ---[ phi ]---\  /---[ theta ]---\  /---  out m
                           ><                   ><
      in m+1 -------------/  \---------------/  \---  out m+1
                        50:50              50:50

Following Clements et al. (2016), the interferometer is modelled as the real rotation
``R(theta) = [[cos, -sin], [sin, cos]]``, so the transfer matrix is

    T(theta, phi) = R(theta) @ diag(e^{i phi}, 1)
                  = [[e^{i phi} cos theta, -sin theta],
                     [e^{i phi} sin theta,  cos theta]],

mapping input amplitudes ``(a_m, a_{m+1})`` to output amplitudes ``T @ (a_m, a_{m+1})``.
``theta = 0`` is the "bar" state (each mode stays in its waveguide, mode ``m`` picks up
``e^{i phi}``); ``theta = pi / 2`` is the "cross" state. Angles are in radians. (The
physical two-coupler form ``B D B`` differs from ``R`` by theta-dependent port phases; it
is not offered as a separate convention.)

Another MZI model (lossy, imbalanced couplers, ...) is one function with the signature of
:func:`mzi_transfer`, ``(theta [...], phi [...]) -> [..., 2, 2]``, passed to the complex
mesh functions as ``transfer=``; nothing else changes. The decomposition inverts this
ideal convention only.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@jax.jit
def mzi_transfer(theta: ArrayLike, phi: ArrayLike) -> jax.Array:
    """Transfer matrix ``T(theta, phi)`` of one MZI on modes ``(m, m + 1)``.

    ``T = [[e^{i phi} cos theta, -sin theta], [e^{i phi} sin theta, cos theta]]``; see the
    module docstring for which phase shifter is where. ``T`` is unitary with determinant
    ``e^{i phi}``.

    Args:
        theta: Internal (splitting) angle in radians, shape ``[...]``.
        phi: External phase in radians on the upper input arm, shape broadcastable with
            ``theta``.

    Returns:
        Complex array ``[..., 2, 2]`` (complex64, or complex128 for float64 inputs).

    Examples:
        >>> import jax.numpy as jnp
        >>> mzi_transfer(0.0, jnp.pi).round(6) + 0.0
        Array([[-1.+0.j,  0.+0.j],
               [ 0.+0.j,  1.+0.j]], dtype=complex64)
    """
    theta, phi = jnp.broadcast_arrays(jnp.asarray(theta), jnp.asarray(phi))
    phase = jnp.exp(1j * phi)
    cos, sin = jnp.cos(theta).astype(phase.dtype), jnp.sin(theta).astype(phase.dtype)
    return jnp.stack([jnp.stack([phase * cos, -sin], -1), jnp.stack([phase * sin, cos], -1)], -2)


@jax.jit
def givens_rotation(theta: ArrayLike) -> jax.Array:
    """Real 2 x 2 rotation ``[[cos theta, -sin theta], [sin theta, cos theta]]``.

    Defined as the real part of ``mzi_transfer(theta, 0)`` (which is real): the MZI with
    its external phase shifter at zero, used by the real (orthogonal) meshes.

    Args:
        theta: Rotation angles in radians, any shape ``[...]``.

    Returns:
        Real array ``[..., 2, 2]`` with the dtype of ``theta`` (float32 unless x64 is on;
        integer angles give the default float dtype).

    Examples:
        >>> import jax.numpy as jnp
        >>> givens_rotation(jnp.pi / 2).round(6) + 0.0  # + 0.0 turns -0.0 into 0.0
        Array([[ 0., -1.],
               [ 1.,  0.]], dtype=float32)
    """
    theta = jnp.asarray(theta)
    if not jnp.issubdtype(theta.dtype, jnp.floating):
        theta = theta.astype(jnp.result_type(float))
    return mzi_transfer(theta, jnp.zeros_like(theta)).real.astype(theta.dtype)
