r"""Kink insertion: dead units of the last hidden layer revived as kinks beside the wrong inputs.

Not in the paper, which ends with its stochastic schedule. Every target of the OptINC unit
datasets is ``t = floor(v)`` of one number, the exact average ``v = sum_m 4^(r m) x_m``
(:func:`~optinc_jax.encoding.units.exact_average`), and a trained network computes a
function of ``v`` alone (README, "Training recipe", item 13). Its last wrong inputs sit on
a few values of ``v`` beside a cliff of a symbol, where the receiver's decision must change
between two neighbouring values of ``v``; the last hidden layer offers no feature with a
kink there, and many of its units never fire (item 12).

:func:`insert_kinks` gives each such cliff a kink. For every edge of a wrong value of
``v`` (the midpoint ``theta`` between it and its neighbouring value of the dataset), it

1. fits a *probe* ``z = a . h + c ~ v``, a linear function of the previous hidden layer's
   activations ``h``, by least squares over the whole dataset with the inputs within
   ``radius`` of ``theta`` weighted ``1 + local_weight`` (exact there, rough elsewhere);
2. turns one dead unit of the last hidden layer into ``relu(+-(z - theta))``, facing the
   nearer end of the range of ``v`` (the wrong inputs sit at its ends, where the grid is
   thin), so that it is zero over most of the dataset;
3. sets that unit's outgoing weights to zero: the network computes exactly what it did.

The last-layer refit (:func:`~optinc_jax.learning.refit.refit_last_layer`, convex) then
decides how much of each new feature every symbol uses. Edges are served in order of how
many wrong inputs they bound, one dead unit each, until the dead units run out; an edge
whose probe does not vary over its neighbourhood (no direction left that sees ``v``) is
skipped and keeps its unit for the next.

When the matrix into the last hidden layer is approximated (``diag(d) U`` blocks, the
``"left"`` side), a revived row must keep every block's ``U`` orthogonal: the dead units'
rows of a block span a subspace that no alive row touches, so each probe is fitted within
that subspace (what is left of it after the earlier probes took their directions), its
direction becomes the unit's row of ``U`` and its length the unit's ``d``. The alive rows
are kept bit for bit.

Measured on the 2-core CPU (README, "Training recipe", item 14): on the 8b8s preset's
final networks, with 40 rounds of the hinge finishing and the refit after the insertion,
169 -> 96 wrong inputs without approximation and 161 -> 149 with layers 2-7, against 159
and 159 for the same finishing and refit without kinks. Not 100 %, not in a preset.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.encoding.units import exact_average, receiver
from optinc_jax.learning.onn import ONNApply, layer_leaf
from optinc_jax.photonics.approx import diag_unitary_factors
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = ["KinkInsertion", "insert_kinks"]


class KinkInsertion(NamedTuple):
    """Outcome of :func:`insert_kinks`.

    Attributes:
        params: the parameters with the revived units (every output unchanged).
        dead_units: units of the last hidden layer that fired on no input.
        wrong_before: inputs decided wrongly (unchanged by the insertion).
        wrong_values: the distinct exact averages ``v`` of the wrong inputs.
        thresholds: the edges given a kink, in the order they were served.
        skipped: edges left without one (no dead unit left).
        probe_errors: per kink, the probe's largest ``|z - v|`` within ``radius`` of it.
        misplaced: per kink, the inputs within ``radius`` that its probe puts on the other
            side of its threshold than their ``v``.
    """

    params: nnx.State
    dead_units: int
    wrong_before: int
    wrong_values: tuple[float, ...]
    thresholds: tuple[float, ...]
    skipped: tuple[float, ...]
    probe_errors: tuple[float, ...]
    misplaced: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict (no parameters)."""
        return {
            "dead_units": self.dead_units,
            "wrong_before": self.wrong_before,
            "wrong_values": list(self.wrong_values),
            "thresholds": list(self.thresholds),
            "skipped": list(self.skipped),
            "probe_errors": list(self.probe_errors),
            "misplaced": list(self.misplaced),
        }


def _scan_chunk(apply_fn: ONNApply, dataset: Dataset, params, start: jax.Array, size: int):
    """Per chunk: wrong mask, exact average, and the hidden statistics of the valid rows."""
    index = start + jnp.arange(size)
    valid = index < dataset.size
    samples = dataset.samples(jnp.where(valid, index, 0))
    model = nnx.merge(apply_fn.graphdef, params)
    hidden = model.hidden_activations(samples.inputs)
    wrong = jnp.any(receiver(model.readout(hidden[-1])) != samples.target_symbols, axis=-1)
    value = exact_average(samples.inputs, dataset.bits)
    previous = jnp.where(valid[:, None], hidden[-2], 0.0)
    design = jnp.concatenate([previous, valid[:, None].astype(previous.dtype)], axis=-1)
    gram = full_matmul(design.T, design)
    moment = full_matmul(design.T, jnp.where(valid, value, 0.0))
    fired = jnp.max(jnp.where(valid[:, None], hidden[-1], 0.0), axis=0)
    return wrong & valid, value, gram, moment, fired


_scan_chunk_jit = jax.jit(_scan_chunk, static_argnames=("apply_fn", "dataset", "size"))


@jax.jit
def _previous_hidden(graphdef, params, inputs):
    return nnx.merge(graphdef, params).hidden_activations(inputs)[-2]


def _matrix_leaves(params, layer: int) -> tuple[np.ndarray, np.ndarray]:
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = layer_leaf(path)
        if key is not None and key[0] == layer:
            found[key[1]] = np.asarray(leaf)
    return found["kernel"], found["bias"]


def _with_leaves(params, replacements: dict[tuple[int, str], np.ndarray]):
    def replace(path, leaf):
        key = layer_leaf(path)
        if key in replacements:
            return jnp.asarray(replacements[key], leaf.dtype).reshape(leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(replace, params)


def _edges(values: np.ndarray, wrong: np.ndarray) -> tuple[list[float], dict[float, int]]:
    """Midpoints between every wrong value and its neighbouring values, most wrong first."""
    distinct = np.unique(values)
    wrong_values = np.unique(values[wrong])
    position = np.searchsorted(distinct, wrong_values)
    counts: dict[float, int] = {}
    for value, at in zip(wrong_values, position, strict=True):
        wrong_here = int(np.sum(wrong & (values == value)))
        for neighbour in (at - 1, at + 1):
            if 0 <= neighbour < len(distinct):
                edge = float(0.5 * (value + distinct[neighbour]))
                counts[edge] = counts.get(edge, 0) + wrong_here
    order = sorted(counts, key=lambda edge: (-counts[edge], edge))
    return order, counts


def _distance_to(points: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[n]`` distance of every value to the nearest of the sorted ``points``."""
    if len(points) == 1:
        return np.abs(values - points[0])
    at = np.clip(np.searchsorted(points, values), 1, len(points) - 1)
    return np.minimum(np.abs(values - points[at - 1]), np.abs(values - points[at]))


def _lift(available: list[np.ndarray], width: int) -> np.ndarray:
    """The probe's coordinates: the available directions, then the bias.

    Returns ``[m + 1, F + 1]``: each block's available directions in the previous layer's
    coordinates (block ``j`` reads inputs ``j width .. (j + 1) width``), then the 1.
    """
    blocks = len(available)
    rows = [
        np.pad(directions, ((0, 0), (j * width, (blocks - j - 1) * width)))
        for j, directions in enumerate(available)
    ]
    rows = np.concatenate(rows, axis=0)
    lifted = np.zeros((len(rows) + 1, blocks * width + 1))
    lifted[:-1, :-1] = rows
    lifted[-1, -1] = 1.0
    return lifted


def _complement(basis: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning ``basis``'s row space minus ``direction`` (in its span)."""
    coordinates = basis @ direction
    norm = np.linalg.norm(coordinates)
    if norm == 0 or basis.shape[0] == 0:
        return basis
    unit = coordinates / norm
    projector = np.eye(basis.shape[0]) - np.outer(unit, unit)
    left, _, _ = np.linalg.svd(projector)
    return left[:, : basis.shape[0] - 1].T @ basis


def insert_kinks(
    apply_fn: ONNApply,
    params: nnx.State,
    dataset: Dataset,
    *,
    approx_layers: tuple[int, ...] = (),
    side: str = "left",
    radius: float = 0.3,
    local_weight: float = 1e4,
    chunk_size: int = 4096,
) -> KinkInsertion:
    """Revives the dead units of the last hidden layer as kinks beside the wrong inputs.

    Args:
        apply_fn: the ONN's pure forward (:class:`~optinc_jax.learning.onn.ONNApply`),
            with at least two hidden layers.
        params: its parameters, projected where ``approx_layers`` says.
        dataset: an OptINC unit dataset (its targets are ``floor`` of the exact average
            of its inputs), the exhaustive grid in training.
        approx_layers: 1-based approximated weight matrices; the one into the last hidden
            layer is then revived inside its ``diag(d) U`` blocks.
        side: the approximation's side; only ``"left"`` (``diag(d) U``) is supported
            when that matrix is approximated.
        radius: half-width, in units of ``v``, of the neighbourhood a probe fits exactly,
            ``> 0``.
        local_weight: extra least-squares weight of that neighbourhood, ``>= 0``.
        chunk_size: inputs per chunk of the passes over the dataset, ``>= 1``.

    Returns:
        The :class:`KinkInsertion`; its network decides every input as before.

    Raises:
        ValueError: on a network with fewer than two hidden layers, an approximated
            matrix on the ``"right"`` side or padded blocks, or a value out of range.
    """
    radius = float(require_real("radius", radius, low=0.0, low_inclusive=False))
    local_weight = float(require_real("local_weight", local_weight, low=0.0))
    chunk_size = require_int("chunk_size", min(chunk_size, dataset.size), 1)
    side = require_choice("side", side, ("left", "right"))
    model = nnx.merge(apply_fn.graphdef, params)
    matrices = len(model.layers)
    if matrices < 3:
        raise ValueError(
            f"kink insertion needs at least two hidden layers, got layers {model.layer_sizes}"
        )
    into_last = matrices - 2  # 0-based index of the matrix into the last hidden layer
    approximated = (into_last + 1) in tuple(approx_layers)
    if approximated and side != "left":
        raise ValueError(
            f"kink insertion into approximated matrix {into_last + 1} needs side 'left' "
            f"(diag(d) U), got {side!r}"
        )

    # One pass: wrong inputs, exact averages, the previous layer's Gram matrix, activity.
    wrong_parts, value_parts, fired = [], [], None
    gram = moment = None
    for start in range(0, dataset.size, chunk_size):
        wrong, value, chunk_gram, chunk_moment, chunk_fired = _scan_chunk_jit(
            apply_fn, dataset, params, jnp.int32(start), chunk_size
        )
        wrong_parts.append(np.asarray(wrong))
        value_parts.append(np.asarray(value, np.float64))
        gram = chunk_gram if gram is None else gram + chunk_gram
        moment = chunk_moment if moment is None else moment + chunk_moment
        fired = chunk_fired if fired is None else jnp.maximum(fired, chunk_fired)
    wrong = np.concatenate(wrong_parts)[: dataset.size]
    values = np.concatenate(value_parts)[: dataset.size]
    # v is a multiple of 1/N: rounding to 2^-12 merges the float32 sums' rounding noise.
    values = np.round(values * 2**12) / 2**12
    gram, moment = np.asarray(gram, np.float64), np.asarray(moment, np.float64)
    dead = np.flatnonzero(np.asarray(fired) <= 0)
    wrong_values = tuple(float(v) for v in np.unique(values[wrong]))
    edges, _ = _edges(values, wrong)
    if not edges or not len(dead):
        return KinkInsertion(
            params, len(dead), int(wrong.sum()), wrong_values, (), tuple(edges), (), ()
        )

    near_index = np.flatnonzero(_distance_to(np.sort(edges), values) <= radius)
    near_inputs = dataset.samples(jnp.asarray(near_index, jnp.int32)).inputs
    near_hidden = np.asarray(_previous_hidden(apply_fn.graphdef, params, near_inputs), np.float64)
    near_design = np.concatenate([near_hidden, np.ones((len(near_index), 1))], axis=1)
    near_values = values[near_index]

    kernel, bias = _matrix_leaves(params, into_last)
    kernel, bias = kernel.astype(np.float64).copy(), bias.astype(np.float64).copy()
    out_kernel, _ = _matrix_leaves(params, matrices - 1)
    out_kernel = out_kernel.copy()
    features = kernel.shape[0]  # previous layer's width
    middle = 0.5 * (values.min() + values.max())

    if approximated:
        weight_matrix = kernel.T  # [out, in]
        out, fan_in = weight_matrix.shape
        if out > fan_in or fan_in % out:
            raise ValueError(
                f"kink insertion into approximated matrix {into_last + 1} of shape "
                f"{weight_matrix.shape} needs square blocks side by side (in a multiple of out)"
            )
        factors = diag_unitary_factors(jnp.asarray(weight_matrix, jnp.float32), side="left")
        diag = np.asarray(factors.diag, np.float64).copy()
        unitary = np.asarray(factors.unitary, np.float64).copy()
        blocks, width = diag.shape
        available = [unitary[j][dead] for j in range(blocks)]
    thresholds, skipped, errors, misplaced = [], [], [], []
    for theta in edges:
        if len(thresholds) == len(dead):
            skipped.append(theta)
            continue
        unit = dead[len(thresholds)]
        local = np.abs(near_values - theta) <= radius
        local_gram = near_design[local].T @ near_design[local]
        local_moment = near_design[local].T @ near_values[local]
        lifted = _lift(available, width) if approximated else np.eye(features + 1)
        system = lifted @ (gram + local_weight * local_gram) @ lifted.T
        rhs = lifted @ (moment + local_weight * local_moment)
        ridge = 1e-9 * np.trace(system) / len(system)
        coefficients = np.linalg.solve(system + ridge * np.eye(len(system)), rhs) @ lifted
        probe, offset = coefficients[:-1], coefficients[-1]
        sign = 1.0 if theta > middle else -1.0
        probed = near_design[local] @ coefficients
        if np.ptp(probed) <= 1e-6 * np.ptp(near_values[local]):
            skipped.append(theta)  # no direction left that varies with v: a constant unit
            continue
        errors.append(float(np.max(np.abs(probed - near_values[local]))))
        misplaced.append(int(np.sum((probed > theta) != (near_values[local] > theta))))
        thresholds.append(float(theta))
        bias[unit] = sign * (offset - theta)
        out_kernel[unit, :] = 0.0
        if not approximated:
            kernel[:, unit] = sign * probe
            continue
        for j in range(blocks):
            part = probe[j * width : (j + 1) * width]
            length = np.linalg.norm(part)
            if length > 0:
                unitary[j][unit] = part / length
                diag[j][unit] = sign * length
                available[j] = _complement(available[j], part)
            else:  # the probe does not use this block: any free direction, switched off
                unitary[j][unit], diag[j][unit] = available[j][0], 0.0
                available[j] = available[j][1:]
    if approximated:
        rest = dead[len(thresholds) :]  # units are revived in the order of ``dead``
        for j in range(blocks):
            unitary[j][rest] = available[j][: len(rest)]
            diag[j][rest] = 0.0
        bias[rest] = np.minimum(bias[rest], 0.0)
        out_kernel[rest, :] = 0.0
        rows = np.concatenate([diag[j][:, None] * unitary[j] for j in range(blocks)], axis=1)
        revived = np.zeros(out, bool)
        revived[dead] = True
        kernel = np.where(revived[:, None], rows, weight_matrix).T  # alive rows as they were
    new_params = _with_leaves(
        params,
        {
            (into_last, "kernel"): kernel,
            (into_last, "bias"): bias,
            (matrices - 1, "kernel"): out_kernel,
        },
    )
    return KinkInsertion(
        new_params,
        len(dead),
        int(wrong.sum()),
        wrong_values,
        tuple(thresholds),
        tuple(float(edge) for edge in skipped),
        tuple(errors),
        tuple(misplaced),
    )
