r"""Physical non-idealities of a deployed circuit, as pure functions of it and a PRNG key.

Every chip-level model has the signature ``model(circuit, key, strength) -> Circuit``: it
returns a copy of the :class:`~optinc_jax.photonics.circuit.Circuit` with its phases or
its per-MZI imperfections changed, and changes nothing at strength zero (the very same
arrays come back, so the simulation is bit-identical to the ideal one). The receiver model
acts on the output amplitudes instead: ``receiver_noise(y, key, std_symbols) -> y``.

=================  =====================================  ==================================
model              strength (unit)                        what changes
=================  =====================================  ==================================
phase_error        ``std_rad``: std of a Gaussian error   every phase setting: MZI ``theta``
                   (rad)                                  and ``phi``, output screens,
                                                          attenuators
dac_quantization   ``bits``: DAC resolution over 2 pi     every phase setting rounded to a
                   (bits; 0 = no quantization)            multiple of ``2 pi / 2^bits``
insertion_loss     ``loss_db``: loss per MZI (dB of       ``loss_db`` of every MZI; it
                   power)                                 accumulates along each path
splitter_error     ``std_rad``: std of each coupler's     ``coupler_error`` of every MZI
                   splitting-angle deviation from pi/4    (a coupler at ``pi/4 + alpha``
                   (rad)                                  passes ``(1 - sin 2 alpha) / 2``
                                                          of the power straight through)
thermal_crosstalk  ``coupling``: fraction of a heater's   every phase setting, plus
                   phase induced on each neighbour        ``coupling`` x the phases (in
                   (dimensionless)                        ``[0, 2 pi)``) of its neighbours
receiver_noise     ``std_symbols``: std of additive       output amplitudes before the PAM4
                   Gaussian noise (PAM4 symbol units)     decision
=================  =====================================  ==================================

**Composition.** Chip-level models compose by function composition, each with its own
key: ``splitter_error(phase_error(c, k1, 0.01), k2, 0.02)``, or with
:func:`chain_perturbations`. Models acting on different fields commute (the phase models,
the loss, the coupler errors). The phase models do not commute with one another; the
physical order is ``dac_quantization`` (the DAC rounds the programmed value), then
``thermal_crosstalk`` (heat spreads from the driven heaters), then ``phase_error`` (random
drift). The receiver noise applies to what
:func:`~optinc_jax.photonics.circuit.circuit_forward` returns, just before the receiver's
decision.

**Neighbours** (thermal crosstalk): heaters of the same kind next to each other on the
chip: the ``theta`` heaters of MZIs in the same mesh column on neighbouring mode pairs
(``(m, m + 1)`` and ``(m + 2, m + 3)``), likewise the ``phi`` heaters, neighbouring
output phase shifters, and neighbouring attenuators of a column. A heater holding phase
``p`` (taken in ``[0, 2 pi)``, its physical drive) adds ``coupling * p`` to each neighbour.

Strengths are validated when they are concrete numbers (``>= 0``; whole numbers for
``bits``); inside ``jit`` / ``vmap`` (traced strengths, as in the robustness sweep) they
are the caller's responsibility.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optinc_jax.photonics.circuit import (
    AttenuatorColumn,
    Circuit,
    MeshSettings,
    SVDStage,
)
from optinc_jax.photonics.mesh import clements_layout
from optinc_jax.validation import require_real

__all__ = [
    "NOISE_MODELS",
    "NoiseModel",
    "Perturbation",
    "chain_perturbations",
    "dac_quantization",
    "insertion_loss",
    "phase_error",
    "receiver_noise",
    "splitter_error",
    "thermal_crosstalk",
]

Perturbation = Callable[[Circuit, jax.Array], Circuit]
"""A chip-level model with its strength fixed: ``(circuit, key) -> circuit``."""


def _strength(name: str, value: ArrayLike, *, integer: bool = False) -> ArrayLike:
    """Check a concrete strength (finite, ``>= 0``, whole if ``integer``); pass tracers."""
    if isinstance(value, jax.core.Tracer):
        return value
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got shape {array.shape}")
    number = require_real(name, array.item(), low=0.0)
    if integer and number != int(number):
        raise ValueError(f"{name} must be a whole number >= 0, got {number}")
    return value


def _groups(circuit: Circuit) -> list[tuple[int, str]]:
    """``(stage index, field)`` of every optical group, in a fixed order."""
    groups = []
    for index, stage in enumerate(circuit.stages):
        names = ("input_mesh", "attenuators", "output_mesh")
        if not isinstance(stage, SVDStage):
            names = ("meshes", "attenuators")
        groups.extend((index, name) for name in names)
    return groups


def _map_groups(
    circuit: Circuit,
    mesh_fn: Callable[[MeshSettings, jax.Array], MeshSettings],
    column_fn: Callable[[AttenuatorColumn, jax.Array], AttenuatorColumn],
    key: jax.Array | None,
) -> Circuit:
    """Apply ``mesh_fn`` / ``column_fn`` to every mesh / attenuator column of the circuit.

    Group ``g`` (in :func:`_groups` order) gets the key ``fold_in(key, g)`` (``None`` when
    ``key`` is ``None``).
    """
    stages = list(circuit.stages)
    for number, (index, name) in enumerate(_groups(circuit)):
        group = getattr(stages[index], name)
        group_key = None if key is None else jax.random.fold_in(key, number)
        fn = column_fn if isinstance(group, AttenuatorColumn) else mesh_fn
        stages[index] = stages[index]._replace(**{name: fn(group, group_key)})
    return circuit._replace(stages=tuple(stages))


def _gaussian(key: jax.Array, like: ArrayLike, std: ArrayLike) -> jax.Array:
    like = jnp.asarray(like)
    dtype = jnp.result_type(like, float)
    return like.astype(dtype) + jnp.asarray(std, dtype) * jax.random.normal(key, like.shape, dtype)


def phase_error(circuit: Circuit, key: jax.Array, std_rad: ArrayLike) -> Circuit:
    """Independent Gaussian error on every phase setting.

    ``theta``, ``phi`` of every MZI (mesh and attenuator) and every output phase get
    ``std_rad * z`` with ``z ~ N(0, 1)`` independent (drift, fabrication, imperfect
    calibration).

    Args:
        circuit: the circuit.
        key: PRNG key.
        std_rad: standard deviation of the error in rad, ``>= 0``.

    Returns:
        The perturbed circuit (``circuit`` itself for ``std_rad == 0``).

    Raises:
        ValueError: if a concrete ``std_rad`` is negative or not finite.

    Examples:
        >>> import jax, numpy as np
        >>> from optinc_jax.photonics.circuit import compile_circuit
        >>> c = compile_circuit({"weights_0": np.eye(2), "biases_0": np.zeros(2),
        ...     "input_shift": 0.0, "input_scale": 1.0, "output_scale": 1.0,
        ...     "output_shift": 0.0, "bits": np.int64(4), "servers": np.int64(2),
        ...     "inputs": np.int64(2)})
        >>> phase_error(c, jax.random.key(0), 0.0) is c
        True
    """
    _strength("std_rad", std_rad)
    return circuit if _is_zero(std_rad) else _phase_error(circuit, key, std_rad)


@jax.jit
def _phase_error(circuit: Circuit, key: jax.Array, std_rad: ArrayLike) -> Circuit:
    def mesh(group: MeshSettings, k: jax.Array) -> MeshSettings:
        k1, k2, k3 = jax.random.split(k, 3)
        return group._replace(
            theta=_gaussian(k1, group.theta, std_rad),
            phi=_gaussian(k2, group.phi, std_rad),
            output_phase=_gaussian(k3, group.output_phase, std_rad),
        )

    def column(group: AttenuatorColumn, k: jax.Array) -> AttenuatorColumn:
        k1, k2 = jax.random.split(k)
        return group._replace(
            theta=_gaussian(k1, group.theta, std_rad), phi=_gaussian(k2, group.phi, std_rad)
        )

    return _map_groups(circuit, mesh, column, key)


def _is_zero(value: ArrayLike) -> bool:
    """Whether a concrete strength is zero (a traced one never is, statically)."""
    return not isinstance(value, jax.core.Tracer) and float(np.asarray(value)) == 0.0


def dac_quantization(circuit: Circuit, key: jax.Array | None, bits: ArrayLike) -> Circuit:
    """Round every phase setting to the resolution of a ``bits``-bit heater DAC over 2 pi.

    Each phase ``p`` becomes ``round(p / step) * step`` with ``step = 2 pi / 2^bits``
    (equivalent modulo 2 pi to quantizing the drive in ``[0, 2 pi)``, since ``step``
    divides ``2 pi``). Deterministic: ``key`` is not used.

    Args:
        circuit: the circuit.
        key: unused (any value, or ``None``); kept for the common model signature.
        bits: DAC resolution in bits, a whole number ``>= 0``; ``0`` means no
            quantization (an ideal DAC).

    Returns:
        The quantized circuit (``circuit`` itself for ``bits == 0``).

    Raises:
        ValueError: if a concrete ``bits`` is negative or not a whole number.
    """
    del key
    _strength("bits", bits, integer=True)
    return circuit if _is_zero(bits) else _dac_quantization(circuit, bits)


@jax.jit
def _dac_quantization(circuit: Circuit, bits: ArrayLike) -> Circuit:
    def quantize(phase: ArrayLike) -> jax.Array:
        phase = jnp.asarray(phase)
        dtype = jnp.result_type(phase, float)
        resolution = jnp.asarray(bits, dtype)
        step = 2 * jnp.pi / jnp.exp2(resolution)
        rounded = jnp.round(phase.astype(dtype) / step) * step
        return jnp.where(resolution > 0, rounded, phase.astype(dtype))

    def mesh(group: MeshSettings, _: object) -> MeshSettings:
        return group._replace(
            theta=quantize(group.theta),
            phi=quantize(group.phi),
            output_phase=quantize(group.output_phase),
        )

    def column(group: AttenuatorColumn, _: object) -> AttenuatorColumn:
        return group._replace(theta=quantize(group.theta), phi=quantize(group.phi))

    return _map_groups(circuit, mesh, column, None)


def insertion_loss(circuit: Circuit, key: jax.Array | None, loss_db: ArrayLike) -> Circuit:
    """Add the same insertion loss to every MZI (meshes and attenuators).

    Each MZI multiplies the two amplitudes it carries by ``10^(-loss_db / 20)``, so the
    loss accumulates along each path: light that crosses ``p`` MZIs from an input to an
    output loses ``p * loss_db`` dB (paths along a mesh's edge cross fewer MZIs). Loss only
    removes power. Deterministic: ``key`` is not used. The electronic gains are not
    recalibrated.

    Args:
        circuit: the circuit.
        key: unused; kept for the common model signature.
        loss_db: loss per MZI in dB of power, ``>= 0``; added to any loss already there.

    Returns:
        The lossy circuit (``circuit`` itself for ``loss_db == 0``).

    Raises:
        ValueError: if a concrete ``loss_db`` is negative or not finite.
    """
    del key
    _strength("loss_db", loss_db)
    return circuit if _is_zero(loss_db) else _insertion_loss(circuit, loss_db)


@jax.jit
def _insertion_loss(circuit: Circuit, loss_db: ArrayLike) -> Circuit:
    def add(group, _):
        loss = jnp.asarray(group.loss_db)
        dtype = jnp.result_type(loss, float)
        return group._replace(loss_db=loss.astype(dtype) + jnp.asarray(loss_db, dtype))

    return _map_groups(circuit, add, add, None)


def splitter_error(circuit: Circuit, key: jax.Array, std_rad: ArrayLike) -> Circuit:
    """Beam-splitter ratio error: Gaussian deviation of every coupler's splitting angle.

    Each MZI has two couplers; each gets a splitting angle ``pi/4 + alpha`` with
    ``alpha = std_rad * z``, ``z ~ N(0, 1)`` independent, added to its
    ``coupler_error``. A coupler of angle ``pi/4 + alpha`` sends the power fraction
    ``cos^2(pi/4 + alpha) = (1 - sin 2 alpha) / 2`` straight through. The MZI becomes
    ``E @ transfer`` (:func:`~optinc_jax.photonics.circuit.coupler_error_matrix`): still
    lossless, but it can no longer reach every splitting ratio exactly.

    Args:
        circuit: the circuit.
        key: PRNG key.
        std_rad: standard deviation of each coupler's angle error in rad, ``>= 0``.

    Returns:
        The perturbed circuit (``circuit`` itself for ``std_rad == 0``).

    Raises:
        ValueError: if a concrete ``std_rad`` is negative or not finite.
    """
    _strength("std_rad", std_rad)
    return circuit if _is_zero(std_rad) else _splitter_error(circuit, key, std_rad)


@jax.jit
def _splitter_error(circuit: Circuit, key: jax.Array, std_rad: ArrayLike) -> Circuit:
    def add(group, k):
        return group._replace(coupler_error=_gaussian(k, group.coupler_error, std_rad))

    return _map_groups(circuit, add, add, key)


@functools.cache
def _column_neighbours(n: int) -> np.ndarray:
    """``[m - 1]`` bool: whether MZIs ``j`` and ``j + 1`` of an ``n``-mode mesh share a column."""
    column, _ = clements_layout(n)
    return column[1:] == column[:-1]


def _crosstalk(phase: ArrayLike, adjacent: np.ndarray, coupling: ArrayLike) -> jax.Array:
    """``phase + coupling * (drive of the left neighbour + drive of the right neighbour)``.

    ``phase [..., m]``; ``adjacent [m - 1]``: whether entries ``j`` and ``j + 1`` are
    neighbours. Drives are the phases taken in ``[0, 2 pi)``.
    """
    phase = jnp.asarray(phase)
    dtype = jnp.result_type(phase, float)
    phase = phase.astype(dtype)
    if phase.shape[-1] < 2:
        return phase
    drive = jnp.mod(phase, 2 * jnp.pi)
    mask = jnp.asarray(adjacent, dtype).reshape((1,) * (phase.ndim - 1) + adjacent.shape)
    pad = jnp.zeros((*phase.shape[:-1], 1), dtype)
    from_left = jnp.concatenate([pad, drive[..., :-1] * mask], axis=-1)
    from_right = jnp.concatenate([drive[..., 1:] * mask, pad], axis=-1)
    return phase + jnp.asarray(coupling, dtype) * (from_left + from_right)


def thermal_crosstalk(circuit: Circuit, key: jax.Array | None, coupling: ArrayLike) -> Circuit:
    """Thermal crosstalk: each heater adds a fraction of its phase to its neighbours.

    Every phase setting ``p_j`` becomes ``p_j + coupling * (d_{j-1} + d_{j+1})`` over its
    neighbours (module docstring), with ``d = p mod 2 pi`` the neighbour's drive. Computed
    from the programmed phases (one step of heat spreading, no feedback). Deterministic:
    ``key`` is not used.

    Args:
        circuit: the circuit.
        key: unused; kept for the common model signature.
        coupling: fraction of a heater's phase induced on each neighbour
            (dimensionless), ``>= 0``.

    Returns:
        The perturbed circuit (``circuit`` itself for ``coupling == 0``).

    Raises:
        ValueError: if a concrete ``coupling`` is negative or not finite.
    """
    del key
    _strength("coupling", coupling)
    return circuit if _is_zero(coupling) else _thermal_crosstalk(circuit, coupling)


@jax.jit
def _thermal_crosstalk(circuit: Circuit, coupling: ArrayLike) -> Circuit:
    def mesh(group: MeshSettings, _: object) -> MeshSettings:
        n = jnp.shape(group.output_phase)[-1]
        between_mzis = _column_neighbours(n)
        between_modes = np.ones(max(n - 1, 0), bool)
        return group._replace(
            theta=_crosstalk(group.theta, between_mzis, coupling),
            phi=_crosstalk(group.phi, between_mzis, coupling),
            output_phase=_crosstalk(group.output_phase, between_modes, coupling),
        )

    def column(group: AttenuatorColumn, _: object) -> AttenuatorColumn:
        adjacent = np.ones(max(jnp.shape(group.theta)[-1] - 1, 0), bool)
        return group._replace(
            theta=_crosstalk(group.theta, adjacent, coupling),
            phi=_crosstalk(group.phi, adjacent, coupling),
        )

    return _map_groups(circuit, mesh, column, None)


def receiver_noise(y: ArrayLike, key: jax.Array, std_symbols: ArrayLike) -> jax.Array:
    """Additive Gaussian noise on the output amplitudes, before the PAM4 decision.

    Args:
        y: ``[..., K]`` raw output amplitudes in PAM4 symbol units (level ``s`` at ``s``;
            the decision thresholds are 0.5, 1.5, 2.5).
        key: PRNG key.
        std_symbols: noise standard deviation in symbol units, ``>= 0``.

    Returns:
        ``y + std_symbols * z``, ``z ~ N(0, 1)`` independent per amplitude (``y`` itself
        for ``std_symbols == 0``).

    Raises:
        ValueError: if a concrete ``std_symbols`` is negative or not finite.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> y = jnp.array([[0.0, 3.0]])
        >>> bool((receiver_noise(y, jax.random.key(0), 0.0) == y).all())
        True
    """
    _strength("std_symbols", std_symbols)
    y = jnp.asarray(y)
    return y if _is_zero(std_symbols) else _gaussian(key, y, std_symbols)


def chain_perturbations(*perturbations: Perturbation) -> Perturbation:
    """Compose chip-level perturbations, applied left to right, each with its own key.

    Args:
        *perturbations: ``(circuit, key) -> circuit`` functions, e.g.
            ``functools.partial(phase_error, std_rad=0.01)``.

    Returns:
        ``(circuit, key) -> circuit`` applying perturbation ``i`` with
        ``jax.random.fold_in(key, i)``.

    Examples:
        >>> import functools
        >>> noisy_chip = chain_perturbations(
        ...     functools.partial(dac_quantization, bits=10),
        ...     functools.partial(thermal_crosstalk, coupling=0.01),
        ...     functools.partial(phase_error, std_rad=0.005),
        ... )
    """

    def perturb(circuit: Circuit, key: jax.Array) -> Circuit:
        for index, perturbation in enumerate(perturbations):
            circuit = perturbation(circuit, jax.random.fold_in(key, index))
        return circuit

    return perturb


class NoiseModel(NamedTuple):
    """One non-ideality, by name, for sweeps and the command line.

    Attributes:
        name: the key in :data:`NOISE_MODELS`.
        unit: unit of its strength.
        description: one line for reports and plot labels.
        perturb: ``(circuit, key, strength) -> circuit`` for chip-level models, else
            ``None``.
        perturb_output: ``(y, key, strength) -> y`` for the receiver model, else ``None``.
        random: whether it draws from the key (``False``: every trial is the same).
        integer: whether strengths must be whole numbers.
    """

    name: str
    unit: str
    description: str
    perturb: Callable | None
    perturb_output: Callable | None
    random: bool = True
    integer: bool = False

    def apply_to_chip(self, circuit: Circuit, key: jax.Array, strength: ArrayLike) -> Circuit:
        """The circuit under this model (the same circuit for the receiver model)."""
        return circuit if self.perturb is None else self.perturb(circuit, key, strength)

    def apply_to_outputs(
        self, y: jax.Array, key: jax.Array, sample_ids: jax.Array, strength: ArrayLike
    ) -> jax.Array:
        """Output amplitudes ``y [n, K]`` under this model (unchanged for chip models).

        Sample ``i`` draws with ``fold_in(key, sample_ids[i])`` (``sample_ids [n]``
        int32), so the noise of a sample does not depend on how the set is chunked.
        """
        if self.perturb_output is None:
            return y
        keys = jax.vmap(functools.partial(jax.random.fold_in, key))(sample_ids)
        return jax.vmap(lambda row, k: self.perturb_output(row, k, strength))(y, keys)


NOISE_MODELS: dict[str, NoiseModel] = {
    "phase": NoiseModel("phase", "rad", "Gaussian phase error (std, rad)", phase_error, None),
    "dac": NoiseModel(
        "dac",
        "bits",
        "heater DAC resolution over 2 pi (bits; 0 = ideal)",
        dac_quantization,
        None,
        random=False,
        integer=True,
    ),
    "loss": NoiseModel(
        "loss", "dB per MZI", "MZI insertion loss (dB per MZI)", insertion_loss, None, random=False
    ),
    "splitter": NoiseModel(
        "splitter",
        "rad",
        "beam-splitter angle error (std, rad)",
        splitter_error,
        None,
    ),
    "crosstalk": NoiseModel(
        "crosstalk",
        "fraction",
        "thermal crosstalk to neighbouring heaters (fraction)",
        thermal_crosstalk,
        None,
        random=False,
    ),
    "receiver": NoiseModel(
        "receiver",
        "symbols",
        "receiver noise before the PAM4 decision (std, symbols)",
        None,
        receiver_noise,
    ),
}
"""The non-ideality models by name (``optinc robustness --model NAME``)."""
