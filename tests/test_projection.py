import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optinc_jax.approx import approx_diag_unitary
from optinc_jax.onn import ONN, onn_apply_fn, onn_weights
from optinc_jax.projection import periodic_projection, projection_diag_unitary


def _params():
    return onn_apply_fn(ONN((4, 16, 8, 4), rngs=nnx.Rngs(3)))[1]


def test_projects_only_selected_layers():
    params = _params()
    projected = projection_diag_unitary(params, (2,))
    before, after = onn_weights(params), onn_weights(projected)
    np.testing.assert_array_equal(after[0][0], before[0][0])
    np.testing.assert_array_equal(after[2][0], before[2][0])
    for (_, b0), (_, b1) in zip(before, after, strict=True):
        np.testing.assert_array_equal(b0, b1)
    np.testing.assert_allclose(after[1][0], approx_diag_unitary(before[1][0]), atol=1e-6)
    assert not np.allclose(after[1][0], before[1][0], atol=1e-3)


def test_projection_is_idempotent():
    params = projection_diag_unitary(_params(), (1, 2, 3))
    again = projection_diag_unitary(params, (1, 2, 3))
    for (w0, _), (w1, _) in zip(onn_weights(params), onn_weights(again), strict=True):
        np.testing.assert_allclose(w0, w1, atol=2e-5)


def test_periodic_projection_schedule():
    params = _params()
    project = lambda p: projection_diag_unitary(p, (2,))  # noqa: E731
    tx = optax.chain(optax.sgd(0.1), periodic_projection(project, every_steps=3, start_step=1))
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    distances = []
    for _ in range(7):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        weight = onn_weights(params)[1][0]
        distances.append(float(jnp.max(jnp.abs(weight - approx_diag_unitary(weight)))))
    # projected after steps 4 and 7 (1-based): start 1, period 3
    on_structure = [d < 1e-5 for d in distances]
    assert on_structure == [False, False, False, True, False, False, True]


def test_periodic_projection_validation():
    with pytest.raises(ValueError):
        periodic_projection(lambda p: p, every_steps=0)
    tx = periodic_projection(lambda p: p, every_steps=1)
    with pytest.raises(ValueError, match="params"):
        tx.update({"a": jnp.zeros(1)}, tx.init({"a": jnp.zeros(1)}))
