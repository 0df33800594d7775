import jax
import numpy as np
import pytest
from flax import nnx

from optinc_jax import (
    ONN,
    compile_projection_diag_unitary,
    onn_apply_fn,
    onn_weights,
    projection_diag_unitary,
)
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


def test_compiling_the_projection_ahead_leaves_nothing_to_compile_for_the_call(compilations):
    params = _params()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    with compilations() as compiled:
        compile_projection_diag_unitary(shapes, (3, 1), side="right")
    assert compiled
    # the same program as the call with concrete parameters, the selection in any order
    with compilations(clear_caches=False) as compiled:
        projection_diag_unitary(params, (1, 3), side="right")
    assert compiled == []
    # another selection is another program
    with compilations(clear_caches=False) as compiled:
        projection_diag_unitary(params, (1, 2), side="right")
    assert compiled


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"approx_layers": (0,)}, "every approx index"),
        ({"approx_layers": (1,), "side": "up"}, "side"),
        ({"approx_layers": (1,), "refine_steps": -1}, "refine_steps"),
    ],
)
def test_compiling_ahead_refuses_what_the_projection_refuses(arguments, message):
    params = _params()
    for function in (projection_diag_unitary, compile_projection_diag_unitary):
        with pytest.raises(ValueError, match=message):
            function(params, **arguments)
