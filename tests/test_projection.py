import numpy as np
from flax import nnx

from optinc_jax import ONN, onn_apply_fn, onn_weights
from optinc_jax.learning.projection import projection_diag_unitary
from optinc_jax.photonics.approx import approx_diag_unitary


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
