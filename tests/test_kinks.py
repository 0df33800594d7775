"""Kink insertion: exact probes where v is a feature, outputs unchanged, blocks kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optinc_jax import (
    ONN,
    diag_unitary_factors,
    exact_average,
    insert_kinks,
    layer_leaf,
    make_dataset_spec,
    onn_apply_fn,
    projection_diag_unitary,
    receiver,
)

SPEC = make_dataset_spec(bits=4, servers=2, inputs=2)  # v = x_0 + 4 x_1 in steps of 1/2


def _set(params, values):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(values[layer_leaf(path)], leaf.dtype).reshape(leaf.shape),
        params,
    )


def _average_feature_onn(last_hidden: int = 6, first_hidden: int = 4):
    """ONN (2, 4, last_hidden, 2): hidden unit 0 of the first layer is ``v`` itself, the
    last hidden layer has two live units (``v`` and ``relu(v - 8)``) and the rest dead (with
    non-zero outgoing weights, which must not leak once they fire)."""
    apply_fn, params = onn_apply_fn(ONN((2, first_hidden, last_hidden, 2), rngs=nnx.Rngs(0)))
    first = np.zeros((2, first_hidden))
    first[:, 0] = (1.0, 4.0)
    second = np.zeros((first_hidden, last_hidden))
    second[0, 0] = second[0, 1] = 1.0
    second_bias = np.full(last_hidden, -1.0)
    second_bias[:2] = (0.0, -8.0)
    last = np.full((last_hidden, 2), 5.0)
    last[:2] = [[0.25, 0.05], [-2.0, 0.1]]
    values = {
        (0, "kernel"): first,
        (0, "bias"): np.array([0.0] + [-1.0] * (first_hidden - 1)),
        (1, "kernel"): second,
        (1, "bias"): second_bias,
        (2, "kernel"): last,
        (2, "bias"): np.array([0.1, 0.2]),
    }
    return apply_fn, _set(params, values)


def _everything(apply_fn, params):
    samples = SPEC.samples(jnp.arange(SPEC.size))
    model = nnx.merge(apply_fn.graphdef, params)
    return samples, model(samples.inputs), model.hidden_activations(samples.inputs)[-1]


def test_exact_average_floors_to_every_target():
    spec = make_dataset_spec(bits=8, servers=4)
    samples = spec.samples(jnp.arange(spec.size))
    values = exact_average(samples.inputs, spec.bits)
    np.testing.assert_array_equal(np.floor(np.asarray(values)), np.asarray(samples.target))
    with pytest.raises(ValueError, match="do not split"):
        exact_average(jnp.zeros((3, 3)), bits=8)


def test_kinks_sit_at_the_edges_of_the_wrong_values_and_keep_every_output():
    apply_fn, params = _average_feature_onn()
    samples, before, _ = _everything(apply_fn, params)
    values = np.asarray(exact_average(samples.inputs, SPEC.bits), np.float64)
    wrong = np.any(np.asarray(receiver(before)) != np.asarray(samples.target_symbols), axis=-1)
    assert 8 < wrong.sum() < SPEC.size  # more edges than dead units

    result = insert_kinks(apply_fn, params, SPEC, radius=1.0)
    _, after, hidden = _everything(apply_fn, result.params)
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    assert result.dead_units == 4 and len(result.thresholds) == 4
    assert result.wrong_before == int(wrong.sum())
    assert set(result.wrong_values) == set(np.unique(values[wrong]).tolist())
    # Every edge lies half a step (1/4) beside a wrong value; served and skipped ones differ.
    edges = [*result.thresholds, *result.skipped]
    assert len(set(edges)) == len(edges)
    for edge in edges:
        assert np.min(np.abs(np.asarray(result.wrong_values) - edge)) == pytest.approx(0.25)
    # v is a feature of the previous layer: each probe is exact, each unit a kink of v.
    assert max(result.probe_errors) < 1e-6 and not any(result.misplaced)
    hidden = np.asarray(hidden)
    middle = 0.5 * (values.min() + values.max())
    for unit, theta in zip(range(2, 6), result.thresholds, strict=True):
        sign = 1.0 if theta > middle else -1.0
        np.testing.assert_allclose(
            hidden[:, unit], np.maximum(sign * (values - theta), 0), atol=1e-5
        )


class _DecidedAsIs:
    """SPEC with its targets replaced by given symbols (identity hash: a static argument)."""

    size = SPEC.size
    bits = SPEC.bits

    def __init__(self, symbols):
        self._symbols = np.asarray(symbols)

    def samples(self, indices):
        base = SPEC.samples(indices)
        symbols = jnp.asarray(self._symbols)[indices]
        return base._replace(target=symbols[..., 0] + 4 * symbols[..., 1], target_symbols=symbols)


def test_a_network_without_wrong_inputs_is_returned_as_it_is():
    apply_fn, params = _average_feature_onn()
    _, outputs, _ = _everything(apply_fn, params)
    result = insert_kinks(apply_fn, params, _DecidedAsIs(receiver(outputs)), radius=1.0)
    assert result.params is params
    assert (result.wrong_before, result.thresholds, result.skipped) == (0, (), ())


def _kernel(params, layer):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if layer_leaf(path) == (layer, "kernel"):
            return np.asarray(leaf)
    raise AssertionError(f"no kernel of layer {layer}")


def test_approximated_matrix_keeps_its_diag_unitary_blocks():
    apply_fn, params = _average_feature_onn(last_hidden=4)  # matrix 2 is 4 x 4: one block
    params = projection_diag_unitary(params, (2,))
    _, before, hidden_before = _everything(apply_fn, params)
    alive = np.asarray(hidden_before).max(axis=0) > 0
    kernel_before = _kernel(params, 1)

    result = insert_kinks(apply_fn, params, SPEC, approx_layers=(2,), radius=1.0)
    _, after, hidden = _everything(apply_fn, result.params)
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    kernel = _kernel(result.params, 1)
    np.testing.assert_array_equal(kernel[:, alive], kernel_before[:, alive])  # bit for bit
    dead = np.flatnonzero(~alive)
    assert result.dead_units == len(dead) >= 2
    # v reaches the block along one direction only: the first probe takes it exactly, and
    # what is left of the dead rows' subspace is orthogonal to it (constant probes): the
    # other edges are skipped and the other dead units stay dead.
    assert len(result.thresholds) == 1 and len(result.skipped) >= 1
    assert result.probe_errors[0] < 1e-5 and result.misplaced[0] == 0
    hidden = np.asarray(hidden)
    theta = result.thresholds[0]
    values = np.asarray(exact_average(SPEC.samples(jnp.arange(SPEC.size)).inputs, SPEC.bits))
    sign = 1.0 if theta > 7.5 else -1.0
    np.testing.assert_allclose(
        hidden[:, dead[0]], np.maximum(sign * (values - theta), 0), atol=1e-5
    )
    assert np.all(hidden[:, dead[1:]] == 0)
    # Still diag(d) U: projecting again moves nothing but rounding.
    reprojected = projection_diag_unitary(result.params, (2,))
    np.testing.assert_allclose(_kernel(reprojected, 1), kernel, atol=1e-5)
    factors = diag_unitary_factors(jnp.asarray(kernel.T))
    unitary = np.asarray(factors.unitary[0])
    np.testing.assert_allclose(unitary @ unitary.T, np.eye(4), atol=1e-5)


def test_a_block_the_probe_does_not_use_stays_orthogonal():
    # Matrix 2 is 4 x 8: two blocks side by side; v reaches only the first one.
    apply_fn, params = _average_feature_onn(last_hidden=4, first_hidden=8)
    # Units 1-3 also read the dead inputs of the second block (no effect yet): the unit
    # revived keeps a row of its own there until the insertion switches it off.
    kernel = _kernel(params, 1).copy()
    kernel[4:, 1:] = 0.3
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(kernel) if layer_leaf(path) == (1, "kernel") else leaf,
        params,
    )
    params = projection_diag_unitary(params, (2,))
    _, before, _ = _everything(apply_fn, params)
    result = insert_kinks(apply_fn, params, SPEC, approx_layers=(2,), radius=1.0)
    _, after, _ = _everything(apply_fn, result.params)
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
    assert len(result.thresholds) == 1
    kernel = _kernel(result.params, 1)
    revived = np.flatnonzero(np.asarray(_everything(apply_fn, params)[2]).max(axis=0) <= 0)[0]
    assert np.any(_kernel(params, 1)[4:, revived] != 0)
    # The kink reads the first block alone: its row in the unused block is switched off.
    np.testing.assert_array_equal(kernel[4:, revived], 0.0)
    assert np.any(kernel[:4, revived] != 0)
    reprojected = projection_diag_unitary(result.params, (2,))
    np.testing.assert_allclose(_kernel(reprojected, 1), kernel, atol=1e-5)
    for unitary in np.asarray(diag_unitary_factors(jnp.asarray(kernel.T)).unitary):
        np.testing.assert_allclose(unitary @ unitary.T, np.eye(4), atol=1e-5)


def test_rejects_what_it_cannot_revive():
    apply_fn, params = _average_feature_onn(last_hidden=4)
    with pytest.raises(ValueError, match="side 'left'"):
        insert_kinks(apply_fn, params, SPEC, approx_layers=(2,), side="right")
    shallow, shallow_params = onn_apply_fn(ONN((2, 4, 2), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="two hidden layers"):
        insert_kinks(shallow, shallow_params, SPEC)
    with pytest.raises(ValueError, match="radius"):
        insert_kinks(apply_fn, params, SPEC, radius=0.0)
