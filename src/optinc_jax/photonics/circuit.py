r"""A trained ONN deployed onto MZI phases: the circuit, its simulation and its file.

:func:`compile_circuit` turns the exported arrays of a trained network (the plain dict of
NumPy arrays that ``optinc export`` writes; see
:func:`optinc_jax.learning.export.export_arrays`) into a :class:`Circuit`: the phase
settings of every MZI of the chip, stage by stage. Weight matrix ``i`` (1-based) becomes

- an :class:`SVDStage` when it is not approximated: ``W = gain * U[:, :k] diag(a) V^T[:k]``
  (:func:`optinc_jax.photonics.svd_mapping.map_matrix_svd`), light going through the
  ``N``-mode mesh of ``V^T``, a column of ``k = min(M, N)`` attenuator MZIs and the
  ``M``-mode mesh of ``U``; the largest singular value is the electronic ``gain``;
- a :class:`BlockStage` when ``i`` is in ``approx_layers``: the ``b`` square ``k x k``
  blocks of :func:`optinc_jax.photonics.approx.partition_blocks`, each one orthogonal mesh
  and one column of ``k`` attenuator MZIs on its outputs (``diag(d) U``) or its inputs
  (``U diag(d)``); ``gain = max |d|`` over the matrix and the attenuations ``d / gain`` lie
  in ``[-1, 1]`` (a negative one is a ``pi`` phase).

Every mesh is a complex rectangular mesh (:class:`MeshSettings`: ``theta``, ``phi``, the
output phase screen). The real orthogonal factors of the mapping are the meshes with every
``phi = 0`` and output phases ``0`` or ``pi``. An attenuator is an MZI read on its upper
port, amplitude ``transfer(theta, phi)[0, 0] = e^{i phi} cos theta``, so ``theta = arccos
|a|`` and ``phi = pi`` for ``a < 0``. The meshes (``M (M - 1) / 2 + N (N - 1) / 2 + min(M,
N)`` MZIs for an SVD stage, ``b (k (k - 1) / 2 + k)`` for a block stage, as in
:mod:`optinc_jax.photonics.area`) are the only optics; the input and output scalings, the
gains, the biases and the ReLU between stages are explicit electronic steps.

**Imperfections live in the circuit.** Beside its phases every MZI carries the deviation
of its two couplers' splitting angles from 50:50 (``coupler_error``, rad) and its
insertion loss (``loss_db``, dB of power), both zero after compilation. The MZI matrix is

    T = 10^(-loss_db / 20) * E(theta, coupler_error) @ transfer(theta, phi),

with ``transfer`` the MZI convention (:func:`optinc_jax.photonics.mzi.mzi_transfer` by
default) and ``E`` the unitary error of the couplers (:func:`coupler_error_matrix`; exactly
the identity for zero error). The non-ideality models of
:mod:`optinc_jax.photonics.nonideal` return circuits with these fields or the phases
changed, so they compose by plain function composition.

**Simulation.** :func:`circuit_forward` builds every mesh's matrix from the phases through
the convention (:func:`mesh_matrix`: the MZI matrices sent through
:func:`optinc_jax.photonics.mesh.propagate_columns`, then the output screen) and applies
the stages to a batch. Each stage's output field is read by coherent detection of its
in-phase (real) component; an ideal circuit is real, so nothing is lost, while phase
errors turn part of the signal into the quadrature that the detector ignores. A stage is
``h -> Re(W_eff) h + bias`` with ``W_eff`` the complex matrix of its optics times its gain,
ReLU after every stage but the last. The result equals the digital network of the export
to float error.

**File format** (:func:`save_circuit` / :func:`load_circuit`, an uncompressed ``.npz``,
version :data:`FORMAT_VERSION`):

==================================  ==================  ====================================
array                               shape / dtype       meaning
==================================  ==================  ====================================
``format_version``                  ``[]`` int64        :data:`FORMAT_VERSION` (1)
``bits``, ``servers``, ``inputs``   ``[]`` int64        scenario of the network
``approx_layers``                   ``[A]`` int64       1-based approximated matrices
``input_shift``, ``input_scale``    ``[]`` float64      ``x -> (x - shift) * scale``
``output_scale``, ``output_shift``  ``[]`` float64      ``y -> y * scale + shift``
``stages``                          ``[]`` int64        number ``L`` of weight matrices
``stage{i}.kind``                   ``[]`` str          ``"svd"`` or ``"blocks"``
``stage{i}.shape``                  ``[2]`` int64       ``(M, N)`` of matrix ``i + 1``
``stage{i}.gain``                   ``[]`` float64      electronic gain
``stage{i}.bias``                   ``[M]`` float64     bias added after detection
``stage{i}.digital_weights``        ``[M, N]``          the exported matrix (reference)
``stage{i}.{mesh}.theta``           ``[..., m]``        MZI angles, rad
``stage{i}.{mesh}.phi``             ``[..., m]``        external phases, rad
``stage{i}.{mesh}.output_phase``    ``[..., n]``        output phase screen, rad
``stage{i}.{mesh}.coupler_error``   ``[..., m, 2]``     coupler angle errors, rad
``stage{i}.{mesh}.loss_db``         ``[..., m]``        insertion loss per MZI, dB
``stage{i}.attenuators.theta``      ``[..., k]``        attenuator angles, rad
``stage{i}.attenuators.phi``        ``[..., k]``        attenuator signs (0 or pi), rad
``stage{i}.attenuators.coupler_error``  ``[..., k, 2]`` coupler angle errors, rad
``stage{i}.attenuators.loss_db``    ``[..., k]``        insertion loss per MZI, dB
``stage{i}.diag_left``              ``[b]`` bool        block stages: diagonal on outputs
==================================  ==================  ====================================

``{mesh}`` is ``input_mesh`` (``n = N``) and ``output_mesh`` (``n = M``) for an SVD stage
(no leading axis), ``meshes`` for a block stage (leading axis ``[b]``, ``n = k``);
``m = n (n - 1) / 2``. A file of another version, a truncated or corrupt one, missing or
unexpected arrays, wrong shapes or non-finite values are refused with one-line errors.
"""

import dataclasses
import functools
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.approx import diag_unitary_factors, factors_to_matrix, merge_blocks
from optinc_jax.photonics.decompose import decompose_orthogonal
from optinc_jax.photonics.mesh import OrthogonalPhases, Transfer, mzi_count, propagate_columns
from optinc_jax.photonics.mzi import mzi_transfer
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.photonics.svd_mapping import map_matrix_svd
from optinc_jax.validation import require_choice, require_finite_array, require_real

__all__ = [
    "FORMAT_VERSION",
    "AttenuatorColumn",
    "BlockStage",
    "Circuit",
    "CircuitInfo",
    "MeshSettings",
    "SVDStage",
    "calibrate_gains",
    "circuit_forward",
    "circuit_matrices",
    "circuit_mzis",
    "compile_circuit",
    "coupler_error_matrix",
    "digital_forward",
    "forward_with_matrices",
    "load_circuit",
    "mesh_matrix",
    "mzi_matrices",
    "save_circuit",
]

FORMAT_VERSION = 1
"""Version of the circuit ``.npz`` format written by :func:`save_circuit`."""

APPROX_TOLERANCE = 1e-4
"""Default largest relative Frobenius residual of an approximated matrix's factorisation."""


class MeshSettings(NamedTuple):
    """One rectangular mesh as built: phases and per-MZI imperfections.

    Fields may carry leading axes (``[b, ...]`` for the blocks of a :class:`BlockStage`).

    Attributes:
        theta: MZI angles ``[..., m]`` in rad, ``m = n (n - 1) / 2``, in the layout order
            of :func:`optinc_jax.photonics.mesh.clements_layout`.
        phi: External phases ``[..., m]`` in rad.
        output_phase: Output phase screen ``[..., n]`` in rad.
        coupler_error: ``[..., m, 2]`` deviation in rad of each MZI's first and second
            coupler splitting angle from ``pi / 4`` (50:50); zero when ideal.
        loss_db: ``[..., m]`` insertion loss of each MZI in dB of power; zero when ideal.
    """

    theta: ArrayLike
    phi: ArrayLike
    output_phase: ArrayLike
    coupler_error: ArrayLike
    loss_db: ArrayLike


class AttenuatorColumn(NamedTuple):
    """A column of attenuator MZIs, each read on its upper port.

    Amplitude transmission of attenuator ``j``: ``T_j[0, 0]`` of its MZI matrix, ideally
    ``e^{i phi_j} cos theta_j``.

    Attributes:
        theta: ``[..., k]`` angles in rad (``arccos`` of the attenuation magnitude).
        phi: ``[..., k]`` external phases in rad (``0``, or ``pi`` for a negative entry).
        coupler_error: ``[..., k, 2]`` coupler splitting-angle errors in rad.
        loss_db: ``[..., k]`` insertion loss of each MZI in dB of power.
    """

    theta: ArrayLike
    phi: ArrayLike
    coupler_error: ArrayLike
    loss_db: ArrayLike


class SVDStage(NamedTuple):
    """A full weight matrix ``W [M, N]``: mesh ``V^T``, attenuators, mesh ``U``, gain.

    Attributes:
        input_mesh: ``N``-mode mesh of ``V^T`` (light enters here).
        attenuators: ``k = min(M, N)`` attenuators on the first ``k`` modes leaving it
            (the other ``N - k`` modes are dropped; the ``M - k`` extra modes of the
            output mesh carry no light).
        output_mesh: ``M``-mode mesh of ``U``.
        gain: ``[]`` electronic gain (the largest singular value).
        bias: ``[M]`` bias added after detection.
    """

    input_mesh: MeshSettings
    attenuators: AttenuatorColumn
    output_mesh: MeshSettings
    gain: ArrayLike
    bias: ArrayLike


class BlockStage(NamedTuple):
    """An approximated matrix: ``b`` blocks of one ``k``-mode mesh and ``k`` attenuators.

    Block ``j`` implements ``diag(a_j) U_j`` (attenuators on its outputs) or
    ``U_j diag(a_j)`` (on its inputs), as :attr:`CircuitInfo.diag_left` says; a tall
    matrix's blocks share the input and their outputs are stacked, a wide one's take
    consecutive slices of the input and their outputs are summed (the fan-out and fan-in
    are ideal). ``W = gain * merge(blocks)``.

    Attributes:
        meshes: ``b`` stacked ``k``-mode meshes (leading axis ``[b]``).
        attenuators: ``[b]`` stacked columns of ``k`` attenuators.
        gain: ``[]`` electronic gain ``max |d|``.
        bias: ``[M]`` bias added after detection.
    """

    meshes: MeshSettings
    attenuators: AttenuatorColumn
    gain: ArrayLike
    bias: ArrayLike


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class CircuitInfo:
    """Static description of a circuit (hashable; part of the pytree structure).

    Attributes:
        bits: gradient bit width ``B`` of the network.
        servers: server count ``N``.
        inputs: ONN input count ``I``.
        approx_layers: 1-based indices of the approximated matrices.
        shapes: ``(M, N)`` of every weight matrix, in order.
        diag_left: per matrix, one flag per block (``True``: attenuators on the block's
            outputs); ``()`` for SVD stages.
    """

    bits: int
    servers: int
    inputs: int
    approx_layers: tuple[int, ...]
    shapes: tuple[tuple[int, int], ...]
    diag_left: tuple[tuple[bool, ...], ...]


class Circuit(NamedTuple):
    """A deployed ONN: the settings of every MZI, stage by stage, and the electronics.

    A pytree: arrays are its leaves (NumPy after :func:`compile_circuit` or
    :func:`load_circuit`, JAX after a non-ideality model), :attr:`info` is static. ``vmap``
    over a stack of circuits (one per noise trial) works field by field.

    Attributes:
        stages: one :class:`SVDStage` or :class:`BlockStage` per weight matrix.
        input_shift: ``[]`` subtracted from the inputs.
        input_scale: ``[]`` multiplies the shifted inputs.
        output_scale: ``[]`` multiplies the last stage's output.
        output_shift: ``[]`` added last (PAM4 symbol units).
        digital_weights: the exported ``[M, N]`` matrices the circuit was compiled from
            (the digital reference; not used by :func:`circuit_forward`).
        info: the static :class:`CircuitInfo`.
    """

    stages: tuple[SVDStage | BlockStage, ...]
    input_shift: ArrayLike
    input_scale: ArrayLike
    output_scale: ArrayLike
    output_shift: ArrayLike
    digital_weights: tuple[ArrayLike, ...]
    info: CircuitInfo


# ----------------------------------------------------------------------------- MZI model


def _coupler(chi: jax.Array) -> jax.Array:
    """Directional coupler ``[[cos chi, i sin chi], [i sin chi, cos chi]]``, ``[..., 2, 2]``."""
    zero = jnp.zeros_like(chi)
    c, s = jax.lax.complex(jnp.cos(chi), zero), jax.lax.complex(zero, jnp.sin(chi))
    return jnp.stack([jnp.stack([c, s], -1), jnp.stack([s, c], -1)], -2)


def _phase(delta: jax.Array) -> jax.Array:
    """Phase shifter on the upper arm, ``diag(e^{i delta}, 1)``, ``[..., 2, 2]``."""
    upper = jnp.exp(1j * delta)
    one, zero = jnp.ones_like(upper), jnp.zeros_like(upper)
    return jnp.stack([jnp.stack([upper, zero], -1), jnp.stack([zero, one], -1)], -2)


@jax.jit
def coupler_error_matrix(theta: ArrayLike, coupler_error: ArrayLike) -> jax.Array:
    r"""Unitary error ``E`` of an MZI whose couplers are not 50:50.

    The convention's interferometer ``R(theta)`` is, up to fixed port phases, two 50:50
    couplers ``B(pi/4)`` around an internal phase ``delta = pi - 2 theta``:
    ``R(theta) = -i e^{-i delta / 2} B(pi/4) D(delta) B(pi/4) diag(1, -1)``, with
    ``B(chi) = [[cos chi, i sin chi], [i sin chi, cos chi]]`` and ``D(delta) =
    diag(e^{i delta}, 1)``. With splitting angles ``pi/4 + alpha_1`` (first coupler) and
    ``pi/4 + alpha_2`` (second) the same expression gives the imperfect interferometer
    ``E R(theta)``, so

        E = B(pi/4 + alpha_2) D(delta) B(alpha_1) D(-delta) B(-pi/4),

    and the imperfect MZI is ``E @ mzi_transfer(theta, phi)``. ``E`` is unitary (couplers
    lose no power); it is exactly the identity where both errors are zero. In the cross
    state (``theta = pi / 2``) light leaks into the bar port with amplitude
    ``|sin(alpha_1 + alpha_2)|``; in the bar state (``theta = 0``) into the cross port with
    ``|sin(alpha_1 - alpha_2)|``.

    Args:
        theta: MZI angles ``[...]`` in rad.
        coupler_error: ``[..., 2]`` splitting-angle errors ``(alpha_1, alpha_2)`` in rad.

    Returns:
        Complex ``[..., 2, 2]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> e = coupler_error_matrix(jnp.pi / 2, jnp.array([0.1, 0.2]))
        >>> t = e @ mzi_transfer(jnp.pi / 2, 0.0)
        >>> round(float(abs(t[0, 0])), 6), round(float(jnp.sin(0.3)), 6)
        (0.29552, 0.29552)
    """
    theta, alpha = jnp.asarray(theta), jnp.asarray(coupler_error)
    if alpha.shape != (*theta.shape, 2):
        raise ValueError(
            f"coupler_error must have shape {(*theta.shape, 2)} for theta of shape "
            f"{theta.shape}, got {alpha.shape}"
        )
    delta = jnp.pi - 2 * theta
    quarter = jnp.full_like(alpha[..., 0], jnp.pi / 4)
    e = functools.reduce(
        full_matmul,
        (
            _coupler(quarter + alpha[..., 1]),
            _phase(delta),
            _coupler(alpha[..., 0]),
            _phase(-delta),
            _coupler(-quarter),
        ),
    )
    ideal = jnp.all(alpha == 0, axis=-1)[..., None, None]
    return jnp.where(ideal, jnp.eye(2, dtype=e.dtype), e)


def mzi_matrices(
    theta: ArrayLike,
    phi: ArrayLike,
    coupler_error: ArrayLike,
    loss_db: ArrayLike,
    *,
    transfer: Transfer = mzi_transfer,
) -> jax.Array:
    """Matrices of imperfect MZIs: ``10^(-loss_db / 20) E(theta, errors) transfer(theta, phi)``.

    With zero ``coupler_error`` and ``loss_db`` this is exactly ``transfer(theta, phi)``.
    Insertion loss only removes power: the matrix is ``10^(-loss_db / 20) <= 1`` times a
    unitary one for an ideal (unitary) ``transfer``.

    Args:
        theta: ``[...]`` MZI angles, rad.
        phi: ``[...]`` external phases, rad.
        coupler_error: ``[..., 2]`` coupler splitting-angle errors, rad.
        loss_db: ``[...]`` insertion loss per MZI, dB of power.
        transfer: the MZI convention ``(theta, phi) -> [..., 2, 2]``.

    Returns:
        Complex ``[..., 2, 2]``.
    """
    theta, phi, loss_db = jnp.asarray(theta), jnp.asarray(phi), jnp.asarray(loss_db)
    ideal = jnp.asarray(transfer(theta, phi))
    t = full_matmul(
        coupler_error_matrix(theta, coupler_error), ideal.astype(jnp.result_type(ideal, 1j))
    )
    amplitude = jnp.power(10.0, -loss_db / 20.0)
    return amplitude[..., None, None].astype(t.dtype) * t


@functools.partial(jax.jit, static_argnames="transfer")
def mesh_matrix(mesh: MeshSettings, *, transfer: Transfer = mzi_transfer) -> jax.Array:
    """Complex matrix ``[n, n]`` of one mesh, built from its phases and imperfections.

    ``diag(e^{i output_phase}) @ propagate_columns(mzi_matrices(...), I)``: through the MZI
    convention ``transfer`` and the column propagation of
    :mod:`optinc_jax.photonics.mesh`, never an ``n x n`` matrix per MZI.

    Args:
        mesh: one :class:`MeshSettings` (no leading axis; ``vmap`` for a stack).
        transfer: the MZI convention (default :func:`~optinc_jax.photonics.mzi.mzi_transfer`);
            static under ``jit``.

    Returns:
        Complex ``[n, n]``; unitary for an ideal lossless mesh, of spectral norm ``<= 1``
        with loss.

    Raises:
        ValueError: if the field shapes do not fit one ``n``-mode mesh.

    Examples:
        >>> import jax.numpy as jnp
        >>> bar = MeshSettings(jnp.zeros(1), jnp.zeros(1), jnp.array([0.0, jnp.pi]),
        ...                    jnp.zeros((1, 2)), jnp.zeros(1))
        >>> mesh_matrix(bar).real + 0.0
        Array([[ 1.,  0.],
               [ 0., -1.]], dtype=float32)
    """
    theta, screen = jnp.asarray(mesh.theta), jnp.asarray(mesh.output_phase)
    n = screen.shape[0] if screen.ndim == 1 else 0
    m = mzi_count(n) if n else -1
    shapes = (theta.shape, jnp.shape(mesh.phi), jnp.shape(mesh.loss_db))
    if n == 0 or any(shape != (m,) for shape in shapes):
        raise ValueError(
            "a mesh needs output_phase [n] and theta, phi, loss_db [n (n - 1) / 2], got "
            f"{screen.shape} and {shapes}"
        )
    transfers = mzi_matrices(theta, mesh.phi, mesh.coupler_error, mesh.loss_db, transfer=transfer)
    u = propagate_columns(transfers, jnp.eye(n, dtype=transfers.dtype))
    return jnp.exp(1j * screen).astype(u.dtype)[:, None] * u


def _attenuation(column: AttenuatorColumn, transfer: Transfer) -> jax.Array:
    """Complex amplitude transmissions ``[..., k]`` of an attenuator column."""
    return mzi_matrices(
        column.theta, column.phi, column.coupler_error, column.loss_db, transfer=transfer
    )[..., 0, 0]


def _svd_stage_matrix(stage: SVDStage, transfer: Transfer) -> jax.Array:
    u_in = mesh_matrix(stage.input_mesh, transfer=transfer)
    u_out = mesh_matrix(stage.output_mesh, transfer=transfer)
    a = _attenuation(stage.attenuators, transfer)
    k = a.shape[-1]
    optics = full_matmul(u_out[:, :k] * a[None, :], u_in[:k, :])
    return jnp.asarray(stage.gain) * optics


def _block_stage_matrix(
    stage: BlockStage, shape: tuple[int, int], diag_left: tuple[bool, ...], transfer: Transfer
) -> jax.Array:
    u = jax.vmap(functools.partial(mesh_matrix, transfer=transfer))(stage.meshes)
    a = _attenuation(stage.attenuators, transfer)
    left = np.asarray(diag_left)[:, None, None]
    blocks = jnp.where(left, a[:, :, None] * u, u * a[:, None, :])
    return jnp.asarray(stage.gain) * merge_blocks(blocks, shape)


@functools.partial(jax.jit, static_argnames="transfer")
def circuit_matrices(circuit: Circuit, *, transfer: Transfer = mzi_transfer) -> tuple:
    """Effective complex matrix of every stage, optics times gain, from the phases.

    Args:
        circuit: a :class:`Circuit`.
        transfer: the MZI convention; static under ``jit``.

    Returns:
        One complex ``[M, N]`` per weight matrix; its real part is what the stage applies
        (coherent in-phase detection), equal to the exported matrix for an ideal circuit.
    """
    matrices = []
    for stage, shape, left in zip(
        circuit.stages, circuit.info.shapes, circuit.info.diag_left, strict=True
    ):
        if isinstance(stage, SVDStage):
            matrices.append(_svd_stage_matrix(stage, transfer))
        else:
            matrices.append(_block_stage_matrix(stage, shape, left, transfer))
    return tuple(matrices)


@functools.partial(jax.jit, static_argnames="transfer")
def calibrate_gains(circuit: Circuit, *, transfer: Transfer = mzi_transfer) -> Circuit:
    """Re-set every stage's electronic gain to fit the digital weights best.

    What a calibration of the chip after fabrication does with the one free electronic
    knob per stage: with ``A = Re(W_eff)`` the stage's matrix as built (gain included)
    and ``W`` the digital weights, the gain is multiplied by
    ``argmin_c ||c A - W||_F = <A, W> / <A, A>`` (left unchanged where ``A = 0``). A
    uniform loss is undone exactly; what remains is its path-dependent part.

    Args:
        circuit: a (perturbed) circuit.
        transfer: the MZI convention; static under ``jit``.

    Returns:
        The circuit with recalibrated gains; an ideal circuit keeps its gains to float
        error.
    """
    stages = []
    for stage, matrix, digital in zip(
        circuit.stages,
        circuit_matrices(circuit, transfer=transfer),
        circuit.digital_weights,
        strict=True,
    ):
        built = jnp.real(matrix)
        target = jnp.asarray(digital).astype(built.dtype)
        norm = jnp.sum(built * built)
        safe = jnp.where(norm > 0, norm, 1.0)
        factor = jnp.where(norm > 0, jnp.sum(built * target) / safe, 1.0)
        stages.append(stage._replace(gain=jnp.asarray(stage.gain) * factor))
    return circuit._replace(stages=tuple(stages))


def _mlp(circuit: Circuit, weights: tuple, x: jax.Array) -> jax.Array:
    """The electronic frame around the optics: scalings, biases, ReLU; ``x [..., I]``."""
    hidden = (x - jnp.asarray(circuit.input_shift)) * jnp.asarray(circuit.input_scale)
    last = len(weights) - 1
    for index, (weight, stage) in enumerate(zip(weights, circuit.stages, strict=True)):
        bias = jnp.asarray(stage.bias)
        hidden = full_matmul(hidden, weight.T) + bias.reshape((1,) * (hidden.ndim - 1) + bias.shape)
        if index < last:
            hidden = jax.nn.relu(hidden)
    return hidden * jnp.asarray(circuit.output_scale) + jnp.asarray(circuit.output_shift)


def _check_input(circuit: Circuit, x: jax.Array) -> None:
    inputs = circuit.info.shapes[0][1]
    if x.ndim < 1 or x.shape[-1] != inputs:
        raise ValueError(f"x must have shape [..., {inputs}] for this circuit, got {x.shape}")


def forward_with_matrices(circuit: Circuit, matrices: tuple, x: ArrayLike) -> jax.Array:
    """:func:`circuit_forward` with the stage matrices already built (for reuse).

    Args:
        circuit: the circuit (its electronics: scalings and biases).
        matrices: :func:`circuit_matrices` of it (or of a perturbed copy).
        x: ``[..., I]`` preprocessed inputs.

    Returns:
        ``[..., K]`` raw output amplitudes in PAM4 symbol units.
    """
    x = jnp.asarray(x)
    _check_input(circuit, x)
    real = tuple(jnp.real(m).astype(jnp.result_type(x, float)) for m in matrices)
    return _mlp(circuit, real, x.astype(jnp.result_type(x, float)))


@functools.partial(jax.jit, static_argnames="transfer")
def circuit_forward(
    circuit: Circuit, x: ArrayLike, *, transfer: Transfer = mzi_transfer
) -> jax.Array:
    """Phase-level simulation: preprocessed inputs through the meshes built from phases.

    Every mesh's matrix is built once per call from its phases through the MZI convention
    (:func:`mesh_matrix`); each stage applies the in-phase part of its optics times its
    gain, adds its bias and (but for the last) a ReLU; the output is scaled and shifted.

    Args:
        circuit: a :class:`Circuit`.
        x: ``[batch, I]`` (or ``[..., I]``) preprocessed inputs.
        transfer: the MZI convention (default
            :func:`~optinc_jax.photonics.mzi.mzi_transfer`); static under ``jit``.

    Returns:
        ``[batch, K]`` raw output amplitudes in PAM4 symbol units, before the receiver;
        equal to :func:`digital_forward` within float tolerance for an ideal circuit.

    Raises:
        ValueError: if ``x`` does not have ``I`` features.
    """
    return forward_with_matrices(circuit, circuit_matrices(circuit, transfer=transfer), x)


@jax.jit
def digital_forward(circuit: Circuit, x: ArrayLike) -> jax.Array:
    """The digital network the circuit was compiled from (its reference weights).

    Args:
        circuit: a :class:`Circuit`.
        x: ``[..., I]`` preprocessed inputs.

    Returns:
        ``[..., K]`` raw output amplitudes, as the exported network computes them.
    """
    x = jnp.asarray(x)
    _check_input(circuit, x)
    dtype = jnp.result_type(x, float)
    weights = tuple(jnp.asarray(w).astype(dtype) for w in circuit.digital_weights)
    return _mlp(circuit, weights, x.astype(dtype))


def circuit_mzis(circuit: Circuit) -> tuple[int, ...]:
    """MZI count of every weight matrix of the circuit (meshes plus attenuators).

    Args:
        circuit: a :class:`Circuit`.

    Returns:
        One count per matrix, as :func:`optinc_jax.photonics.area.matrix_mzis` (SVD
        stages) and ``approx_matrix_mzis`` (block stages) give it.
    """
    counts = []
    for stage in circuit.stages:
        meshes = (
            (stage.input_mesh, stage.output_mesh)
            if isinstance(stage, SVDStage)
            else (stage.meshes,)
        )
        count = sum(int(np.size(mesh.theta)) for mesh in meshes)
        counts.append(count + int(np.size(stage.attenuators.theta)))
    return tuple(counts)


# ----------------------------------------------------------------------------- compile


def _float64():
    """Context in which JAX computes in float64 (the decompositions of :func:`compile_circuit`)."""
    return jax.enable_x64(True)


def _mesh_settings(phases: OrthogonalPhases) -> MeshSettings:
    """A real orthogonal mesh as complex mesh settings (``phi = 0``, screen ``0`` / ``pi``)."""
    theta = np.asarray(phases.theta, np.float64)
    sign = np.asarray(phases.output_sign)
    return MeshSettings(
        theta=theta,
        phi=np.zeros_like(theta),
        output_phase=np.where(sign < 0, np.pi, 0.0),
        coupler_error=np.zeros((*theta.shape, 2)),
        loss_db=np.zeros_like(theta),
    )


def _attenuators(a: np.ndarray) -> AttenuatorColumn:
    """Attenuator MZIs for signed amplitudes ``a`` in ``[-1, 1]``."""
    magnitude = np.abs(a)
    if magnitude.size and magnitude.max() > 1.0:
        raise ValueError(f"attenuations must lie in [-1, 1], got max |a| = {magnitude.max()}")
    return AttenuatorColumn(
        theta=np.arccos(magnitude),
        phi=np.where(a < 0, np.pi, 0.0),
        coupler_error=np.zeros((*a.shape, 2)),
        loss_db=np.zeros_like(magnitude),
    )


def _svd_stage(weight: np.ndarray, bias: np.ndarray) -> SVDStage:
    mapping = map_matrix_svd(weight)
    return SVDStage(
        input_mesh=_mesh_settings(mapping.input_mesh),
        attenuators=_attenuators(np.asarray(mapping.attenuation, np.float64)),
        output_mesh=_mesh_settings(mapping.output_mesh),
        gain=np.float64(mapping.gain),
        bias=bias,
    )


def _block_factors(weight: np.ndarray, index: int, side: str | None, tolerance: float):
    """Diagonal x orthogonal factors of an approximated matrix, on the side that fits."""
    sides = ("left", "right") if side is None else (side,)
    scale = max(float(np.linalg.norm(weight)), np.finfo(np.float64).tiny)
    best = None
    for candidate in sides:
        factors = diag_unitary_factors(weight, side=candidate)
        approx = np.asarray(factors_to_matrix(factors, weight.shape))
        residual = float(np.linalg.norm(approx - weight)) / scale
        if best is None or residual < best[0]:
            best = (residual, factors)
    residual, factors = best
    if residual > tolerance:
        raise ValueError(
            f"weight matrix {index} is listed in approx_layers but is not of diagonal x "
            f"orthogonal block form: relative residual {residual:.2e} > {tolerance:.0e} "
            f"(side {' or '.join(sides)})"
        )
    return factors


def _block_stage(weight: np.ndarray, bias: np.ndarray, factors) -> tuple[BlockStage, tuple]:
    d = np.asarray(factors.diag, np.float64)
    unitary = np.asarray(factors.unitary, np.float64)
    gain = float(np.max(np.abs(d))) if d.size else 0.0
    a = d / gain if gain > 0 else np.zeros_like(d)
    meshes = [_mesh_settings(decompose_orthogonal(u)) for u in unitary]
    stacked = MeshSettings(*(np.stack(field) for field in zip(*meshes, strict=True)))
    stage = BlockStage(
        meshes=stacked, attenuators=_attenuators(a), gain=np.float64(gain), bias=bias
    )
    return stage, tuple(bool(flag) for flag in np.asarray(factors.diag_left))


def _scalar(arrays: Mapping, name: str, kind: type) -> float | int:
    if name not in arrays:
        raise ValueError(f"the exported arrays lack {name!r}")
    value = np.asarray(arrays[name])
    if value.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
    if kind is int:
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{name} must be an integer, got dtype {value.dtype}")
        return int(value)
    return require_real(name, float(value))


def _layers(arrays: Mapping) -> list[tuple[np.ndarray, np.ndarray]]:
    count = sum(1 for name in arrays if name.startswith("weights_"))
    if count == 0:
        raise ValueError("the exported arrays hold no weights_0")
    layers = []
    for index in range(count):
        for name in (f"weights_{index}", f"biases_{index}"):
            if name not in arrays:
                raise ValueError(f"the exported arrays lack {name!r} ({count} weight matrices)")
        weight = np.asarray(arrays[f"weights_{index}"])
        bias = np.asarray(arrays[f"biases_{index}"])
        if weight.ndim != 2 or 0 in weight.shape or bias.shape != weight.shape[:1]:
            raise ValueError(
                f"weights_{index} must be [M, N] with biases_{index} [M], got "
                f"{weight.shape} and {bias.shape}"
            )
        if layers and weight.shape[1] != layers[-1][0].shape[0]:
            raise ValueError(
                f"weights_{index} takes {weight.shape[1]} inputs but weights_{index - 1} "
                f"gives {layers[-1][0].shape[0]} outputs"
            )
        for name, value in ((f"weights_{index}", weight), (f"biases_{index}", bias)):
            if not np.issubdtype(value.dtype, np.floating):
                raise ValueError(f"{name} must be real floating point, got dtype {value.dtype}")
            require_finite_array(f"{name} (a diverged network cannot be deployed)", value)
        layers.append((weight, bias))
    return layers


def compile_circuit(
    arrays: Mapping[str, ArrayLike],
    *,
    approx_side: str | None = None,
    approx_tolerance: float = APPROX_TOLERANCE,
) -> Circuit:
    """Compile exported network arrays into MZI phase settings.

    Full matrices go through the SVD mapping, approximated ones (``approx_layers``)
    through their diagonal x orthogonal block factors; every orthogonal factor is
    decomposed into mesh phases (:func:`optinc_jax.photonics.decompose.decompose_orthogonal`).
    The factorisations run in float64; the phases are stored in float64.

    Args:
        arrays: the export dict (``weights_i [out, in]``, ``biases_i``, ``input_shift``,
            ``input_scale``, ``output_scale``, ``output_shift``, ``bits``, ``servers``,
            ``inputs``, ``approx_layers``), as ``load_exported`` returns it.
        approx_side: ``"left"`` or ``"right"``, the side of the approximated blocks'
            diagonals in training; ``None`` tries both and keeps the one that fits (the
            export does not record it).
        approx_tolerance: largest relative Frobenius residual ``||W - diag x U|| / ||W||``
            accepted for an approximated matrix (a projected network has ~1e-7).

    Returns:
        The ideal :class:`Circuit` (zero coupler errors and loss).

    Raises:
        ValueError: if an array is missing, of the wrong shape or dtype, or non-finite,
            ``approx_layers`` names a matrix that does not exist or that is not of
            diagonal x orthogonal block form within ``approx_tolerance``.

    Examples:
        >>> import numpy as np
        >>> arrays = {"weights_0": np.array([[1.0, 2.0], [0.5, -1.0]]),
        ...           "biases_0": np.zeros(2), "input_shift": 0.0, "input_scale": 1.0,
        ...           "output_scale": 1.0, "output_shift": 0.0, "bits": np.int64(4),
        ...           "servers": np.int64(2), "inputs": np.int64(2)}
        >>> circuit = compile_circuit(arrays)
        >>> circuit_forward(circuit, np.array([[1.0, 1.0]])).round(4)
        Array([[ 3. , -0.5]], dtype=float32)
        >>> circuit_mzis(circuit)
        (4,)
    """
    if approx_side is not None:
        require_choice("approx_side", approx_side, ("left", "right"))
    tolerance = require_real("approx_tolerance", approx_tolerance, low=0.0)
    layers = _layers(arrays)
    approx = tuple(int(i) for i in np.asarray(arrays.get("approx_layers", []), np.int64).ravel())
    bad = [i for i in approx if not 1 <= i <= len(layers)]
    if bad or len(set(approx)) != len(approx):
        raise ValueError(
            f"approx_layers must be distinct 1-based indices in [1, {len(layers)}], got "
            f"{list(approx)}"
        )
    scalars = {
        name: _scalar(arrays, name, float)
        for name in ("input_shift", "input_scale", "output_scale", "output_shift")
    }
    ints = {name: _scalar(arrays, name, int) for name in ("bits", "servers", "inputs")}
    if ints["inputs"] != layers[0][0].shape[1]:
        raise ValueError(
            f"inputs is {ints['inputs']} but weights_0 takes {layers[0][0].shape[1]} inputs"
        )
    stages, lefts = [], []
    with _float64():
        for index, (weight, bias) in enumerate(layers, start=1):
            weight64 = np.asarray(weight, np.float64)
            bias64 = np.asarray(bias, np.float64)
            if index in approx:
                factors = _block_factors(weight64, index, approx_side, tolerance)
                stage, left = _block_stage(weight64, bias64, factors)
            else:
                stage, left = _svd_stage(weight64, bias64), ()
            stages.append(stage)
            lefts.append(left)
    info = CircuitInfo(
        bits=ints["bits"],
        servers=ints["servers"],
        inputs=ints["inputs"],
        approx_layers=tuple(sorted(approx)),
        shapes=tuple((int(w.shape[0]), int(w.shape[1])) for w, _ in layers),
        diag_left=tuple(lefts),
    )
    return Circuit(
        stages=tuple(stages),
        **{name: np.float64(value) for name, value in scalars.items()},
        digital_weights=tuple(np.asarray(w) for w, _ in layers),
        info=info,
    )


# ----------------------------------------------------------------------------- file


def _flatten(circuit: Circuit) -> dict[str, np.ndarray]:
    """The circuit as the named arrays of the file format."""
    info = circuit.info
    arrays: dict[str, np.ndarray] = {
        "format_version": np.int64(FORMAT_VERSION),
        "bits": np.int64(info.bits),
        "servers": np.int64(info.servers),
        "inputs": np.int64(info.inputs),
        "approx_layers": np.asarray(info.approx_layers, np.int64),
        "stages": np.int64(len(circuit.stages)),
    }
    for name in ("input_shift", "input_scale", "output_scale", "output_shift"):
        arrays[name] = np.asarray(getattr(circuit, name), np.float64)
    for i, (stage, shape, left, digital) in enumerate(
        zip(circuit.stages, info.shapes, info.diag_left, circuit.digital_weights, strict=True)
    ):
        prefix = f"stage{i}."
        svd = isinstance(stage, SVDStage)
        arrays[prefix + "kind"] = np.asarray("svd" if svd else "blocks")
        arrays[prefix + "shape"] = np.asarray(shape, np.int64)
        arrays[prefix + "gain"] = np.asarray(stage.gain, np.float64)
        arrays[prefix + "bias"] = np.asarray(stage.bias, np.float64)
        arrays[prefix + "digital_weights"] = np.asarray(digital)
        groups = (
            {"input_mesh": stage.input_mesh, "output_mesh": stage.output_mesh}
            if svd
            else {"meshes": stage.meshes}
        )
        groups["attenuators"] = stage.attenuators
        for group, value in groups.items():
            for field, array in value._asdict().items():
                arrays[f"{prefix}{group}.{field}"] = np.asarray(array, np.float64)
        if not svd:
            arrays[prefix + "diag_left"] = np.asarray(left, bool)
    return arrays


def save_circuit(path: str | Path, circuit: Circuit) -> Path:
    """Write a circuit as a versioned ``.npz`` (format in the module docstring), atomically.

    The file is written beside its destination under a temporary name, flushed to disk
    and renamed over it: a reader sees the old file or the new one, never a part.

    Args:
        path: destination; ``.npz`` is appended if missing.
        circuit: the :class:`Circuit` (ideal or perturbed).

    Returns:
        The written path.

    Raises:
        ValueError: if the destination's directory does not exist, or the circuit holds
            NaN or infinite values.
        OSError: if the file cannot be written (permissions, full disk); nothing is left.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the directory {path.parent} does not exist")
    arrays = _flatten(circuit)
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating):
            require_finite_array(f"circuit array {name}", array)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    return path


class _Reader:
    """Pops named arrays of a loaded file, checking shape and dtype, one-line errors."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray]):
        self.path, self.arrays = path, arrays

    def take(self, name: str, shape: tuple[int, ...], kind: str = "float") -> np.ndarray:
        if name not in self.arrays:
            raise ValueError(f"{self.path} is not a complete circuit file: missing {name!r}")
        value = self.arrays.pop(name)
        if value.shape != shape:
            raise ValueError(
                f"{self.path}: array {name!r} has shape {value.shape}, expected {shape}"
            )
        expected = {"float": np.floating, "int": np.integer, "bool": np.bool_, "str": np.str_}
        if not np.issubdtype(value.dtype, expected[kind]):
            raise ValueError(
                f"{self.path}: array {name!r} has dtype {value.dtype}, expected {kind}"
            )
        if kind == "float" and not np.all(np.isfinite(value)):
            raise ValueError(f"{self.path}: array {name!r} holds NaN or infinite values")
        return value

    def positive(self, name: str) -> int:
        value = int(self.take(name, (), "int"))
        if value < 1:
            raise ValueError(f"{self.path}: {name} must be >= 1, got {value}")
        return value


def _read_mesh(reader: _Reader, prefix: str, lead: tuple[int, ...], n: int) -> MeshSettings:
    m = n * (n - 1) // 2
    return MeshSettings(
        theta=reader.take(prefix + "theta", (*lead, m)),
        phi=reader.take(prefix + "phi", (*lead, m)),
        output_phase=reader.take(prefix + "output_phase", (*lead, n)),
        coupler_error=reader.take(prefix + "coupler_error", (*lead, m, 2)),
        loss_db=reader.take(prefix + "loss_db", (*lead, m)),
    )


def _read_attenuators(reader: _Reader, prefix: str, shape: tuple[int, ...]) -> AttenuatorColumn:
    return AttenuatorColumn(
        theta=reader.take(prefix + "theta", shape),
        phi=reader.take(prefix + "phi", shape),
        coupler_error=reader.take(prefix + "coupler_error", (*shape, 2)),
        loss_db=reader.take(prefix + "loss_db", shape),
    )


def load_circuit(path: str | Path) -> Circuit:
    """Read a circuit written by :func:`save_circuit`, checking every array.

    Args:
        path: the ``.npz`` file.

    Returns:
        The :class:`Circuit` (NumPy arrays).

    Raises:
        ValueError: if the file does not exist, is truncated, corrupt or not a ``.npz``,
            has another ``format_version`` (or none), lacks an array or holds an
            unexpected one, has an array of the wrong shape or dtype, or holds NaN or
            infinite values.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a readable .npz file: {message}") from None
    if "format_version" not in arrays:
        raise ValueError(f"{path} is not an optinc circuit file: it has no format_version")
    version = arrays["format_version"]
    if version.shape != () or not np.issubdtype(version.dtype, np.integer):
        raise ValueError(f"{path}: format_version must be an integer scalar")
    if int(version) != FORMAT_VERSION:
        raise ValueError(
            f"{path} is a circuit file of format version {int(version)}; this version of "
            f"optinc-jax reads version {FORMAT_VERSION}"
        )
    reader = _Reader(path, arrays)
    reader.take("format_version", (), "int")
    bits, servers, inputs = (reader.positive(name) for name in ("bits", "servers", "inputs"))
    count = reader.positive("stages")
    approx_values = arrays.get("approx_layers", np.zeros(0, np.int64))
    if approx_values.ndim != 1:
        raise ValueError(f"{path}: approx_layers must be 1-D, got shape {approx_values.shape}")
    approx = tuple(int(i) for i in reader.take("approx_layers", approx_values.shape, "int"))
    scalars = {
        name: np.float64(reader.take(name, ()))
        for name in ("input_shift", "input_scale", "output_scale", "output_shift")
    }
    stages, shapes, lefts, digital = [], [], [], []
    for i in range(count):
        prefix = f"stage{i}."
        kind = str(reader.take(prefix + "kind", (), "str"))
        shape_array = reader.take(prefix + "shape", (2,), "int")
        rows, cols = (int(v) for v in shape_array)
        if rows < 1 or cols < 1:
            raise ValueError(f"{path}: {prefix}shape must be positive, got {(rows, cols)}")
        if shapes and cols != shapes[-1][0]:
            raise ValueError(
                f"{path}: stage {i} takes {cols} inputs, stage {i - 1} gives {shapes[-1][0]}"
            )
        gain = np.float64(reader.take(prefix + "gain", ()))
        bias = reader.take(prefix + "bias", (rows,))
        digital.append(reader.take(prefix + "digital_weights", (rows, cols)))
        k = min(rows, cols)
        if kind == "svd":
            if i + 1 in approx:
                raise ValueError(f"{path}: stage {i} is in approx_layers but of kind 'svd'")
            stage = SVDStage(
                input_mesh=_read_mesh(reader, prefix + "input_mesh.", (), cols),
                attenuators=_read_attenuators(reader, prefix + "attenuators.", (k,)),
                output_mesh=_read_mesh(reader, prefix + "output_mesh.", (), rows),
                gain=gain,
                bias=bias,
            )
            left = ()
        elif kind == "blocks":
            if i + 1 not in approx:
                raise ValueError(f"{path}: stage {i} is of kind 'blocks' but not in approx_layers")
            b = math.ceil(max(rows, cols) / k)
            stage = BlockStage(
                meshes=_read_mesh(reader, prefix + "meshes.", (b,), k),
                attenuators=_read_attenuators(reader, prefix + "attenuators.", (b, k)),
                gain=gain,
                bias=bias,
            )
            left = tuple(bool(v) for v in reader.take(prefix + "diag_left", (b,), "bool"))
        else:
            raise ValueError(f"{path}: {prefix}kind must be 'svd' or 'blocks', got {kind!r}")
        stages.append(stage)
        shapes.append((rows, cols))
        lefts.append(left)
    if shapes[0][1] != inputs:
        raise ValueError(f"{path}: inputs is {inputs} but stage 0 takes {shapes[0][1]}")
    if reader.arrays:
        raise ValueError(f"{path}: unexpected arrays {sorted(reader.arrays)[:5]}")
    info = CircuitInfo(
        bits=bits,
        servers=servers,
        inputs=inputs,
        approx_layers=tuple(sorted(approx)),
        shapes=tuple(shapes),
        diag_left=tuple(lefts),
    )
    return Circuit(stages=tuple(stages), **scalars, digital_weights=tuple(digital), info=info)
