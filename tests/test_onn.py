import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optinc_jax import ONN, build_onn, onn_apply_fn, onn_weights, weight_matrix_index


def test_forward_matches_manual_mlp():
    model = ONN(
        (3, 5, 4, 2),
        rngs=nnx.Rngs(1),
        input_shift=0.5,
        input_scale=2.0,
        output_shift=1.5,
        output_scale=3.0,
    )
    x = jax.random.uniform(jax.random.key(0), (7, 3))
    apply, params = onn_apply_fn(model)
    hidden = (x - 0.5) * 2.0
    pairs = onn_weights(params)
    for i, (weight, bias) in enumerate(pairs):
        chex.assert_shape(weight, (model.layer_sizes[i + 1], model.layer_sizes[i]))
        hidden = hidden @ weight.T + bias[None, :]
        if i < len(pairs) - 1:
            hidden = jax.nn.relu(hidden)
    expected = hidden * 3.0 + 1.5
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(apply)(params, x), expected, rtol=1e-5, atol=1e-6)


def test_build_onn_centres_inputs():
    model = build_onn((4, 8, 4), symbols_per_input=1)
    assert model.input_shift == 1.5 and model.input_scale == pytest.approx(2 / 3)
    model = build_onn((4, 8, 8), symbols_per_input=2)
    assert model.input_shift == 7.5


def test_weight_matrix_index_on_state_paths():
    _, params = onn_apply_fn(ONN((2, 3, 4, 1), rngs=nnx.Rngs(0)))
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        index = weight_matrix_index(path)
        if index is not None:
            found[index] = leaf.shape
    assert found == {0: (2, 3), 1: (3, 4), 2: (4, 1)}
    pure = nnx.to_pure_dict(params)
    assert sorted(
        weight_matrix_index(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(pure)[0]
        if weight_matrix_index(path) is not None
    ) == [0, 1, 2]


def test_bad_layers():
    with pytest.raises(ValueError, match="widths"):
        ONN((4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="every layer width must be an integer >= 1, got 0"):
        ONN((4, 0, 2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"every layer width must be an integer >= 1, got 2\.5"):
        ONN((4, 2.5, 2), rngs=nnx.Rngs(0))


def test_apply_does_not_recompile():
    apply, params = onn_apply_fn(build_onn((4, 8, 4), symbols_per_input=1))
    jitted = jax.jit(apply)
    jitted(params, jnp.zeros((5, 4)))
    jitted(params, jnp.ones((5, 4)))
    assert jitted._cache_size() == 1


def _products(hlo: str) -> list[str]:
    return [line for line in hlo.splitlines() if "dot_general" in line]


def test_every_matrix_product_runs_in_full_float32():
    # A GPU's default precision would round float32 products to TF32; the ONN asks for
    # HIGHEST in the forward pass and its gradient, so accelerators report float32 results.
    apply, params = onn_apply_fn(build_onn((4, 8, 8, 4), symbols_per_input=1))
    x = jnp.ones((2, 4))
    forward = _products(jax.jit(apply).lower(params, x).as_text())

    def squared_output(p):
        return jnp.sum(apply(p, x) ** 2)

    backward = _products(jax.jit(jax.grad(squared_output)).lower(params).as_text())
    assert len(forward) == 3 and len(backward) >= 3 + 2 * 2
    for line in forward + backward:
        assert "precision = [HIGHEST, HIGHEST]" in line, line


@pytest.mark.parametrize(
    ("layers", "symbols_per_input"), [((4, 8, 4), 1), ((4, 64, 128, 64, 8), 2), ((2, 3), 1)]
)
@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**31, 2**32 + 5])
def test_build_onn_initializes_as_the_eager_module_does(layers, symbols_per_input, seed):
    # one compiled initialization (int32 seeds) or the eager one beyond: the same arrays,
    # dtypes and maps as constructing the module directly
    scale = 4.0**symbols_per_input - 1.0
    eager = ONN(
        layers,
        rngs=nnx.Rngs(seed),
        input_shift=scale / 2,
        input_scale=2 / scale,
        output_shift=1.5,
        output_scale=1.5,
    )
    built = build_onn(layers, symbols_per_input=symbols_per_input, seed=seed)
    chex.assert_trees_all_equal(nnx.state(built), nnx.state(eager))
    chex.assert_trees_all_equal_dtypes(nnx.state(built), nnx.state(eager))
    assert (built.input_shift, built.input_scale) == (eager.input_shift, eager.input_scale)
    assert built.layer_sizes == layers
    x = jnp.linspace(0, scale, 3 * layers[0]).reshape(3, layers[0])
    np.testing.assert_array_equal(built(x), eager(x))


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_build_onn_refuses_a_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        build_onn((4, 8, 4), symbols_per_input=1, seed=seed)
