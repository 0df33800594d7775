import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import SVDMeshMapping, apply_svd_mapping, map_matrix_svd, reconstruct_matrix
from optinc_jax.photonics.mesh import orthogonal_matrix


def rank_deficient(m, n, rank, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


CASES = {
    "square": np.random.default_rng(0).standard_normal((4, 4)),
    "tall": np.random.default_rng(1).standard_normal((5, 3)),
    "wide": np.random.default_rng(2).standard_normal((3, 5)),
    "rank_deficient": rank_deficient(5, 3, 1, 3),
    "zero_column": np.random.default_rng(4).standard_normal((3, 5)) * np.array([1, 1, 0, 1, 1]),
    "one_by_one": np.array([[-2.5]]),
}


@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_propagation(name, x64):
    w = CASES[name]
    m, n = w.shape
    mapping = map_matrix_svd(w)
    assert mapping.output_mesh.output_sign.shape == (m,)
    assert mapping.input_mesh.output_sign.shape == (n,)
    assert mapping.attenuation.shape == (min(m, n),)
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(mapping.gain, s[0], rtol=1e-12)
    np.testing.assert_allclose(mapping.attenuation, s / s[0], atol=1e-12)
    assert mapping.attenuation[0] == 1.0 and np.all(mapping.attenuation >= 0)
    chex.assert_trees_all_close(reconstruct_matrix(mapping), w, atol=1e-12)
    x = np.random.default_rng(9).standard_normal((3, n))
    chex.assert_trees_all_close(apply_svd_mapping(mapping, x), x @ w.T, atol=1e-12)
    if name == "wide":  # one vector instead of a batch
        chex.assert_trees_all_close(apply_svd_mapping(mapping, x[0]), w @ x[0], atol=1e-12)


def test_rank_deficient_blocks_modes(x64):
    mapping = map_matrix_svd(rank_deficient(3, 5, 2, 4))
    np.testing.assert_allclose(mapping.attenuation[2:], 0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_zero_matrix_gives_zero_gain_and_no_nan(shape, x64):
    mapping = map_matrix_svd(np.zeros(shape))
    assert float(mapping.gain) == 0.0
    np.testing.assert_array_equal(mapping.attenuation, 0.0)
    for leaf in jax.tree.leaves(mapping):
        assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(reconstruct_matrix(mapping), np.zeros(shape))
    y = apply_svd_mapping(mapping, np.ones((3, shape[1])))
    np.testing.assert_array_equal(y, np.zeros((3, shape[0])))


def test_meshes_hold_the_svd_factors(x64):
    w = CASES["tall"]
    mapping = map_matrix_svd(w)
    u = np.asarray(orthogonal_matrix(mapping.output_mesh))
    vt = np.asarray(orthogonal_matrix(mapping.input_mesh))
    np.testing.assert_allclose(u.T @ u, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(vt @ vt.T, np.eye(3), atol=1e-12)
    # U^T W V = diag(s) padded: the meshes diagonalise W.
    core = u.T @ w @ vt.T
    s = mapping.gain * np.asarray(mapping.attenuation)
    np.testing.assert_allclose(core[:3], np.diag(s), atol=1e-12)
    np.testing.assert_allclose(core[3:], 0.0, atol=1e-12)


@given(shape=st.sampled_from([(1, 1), (5, 3), (3, 5), (4, 4)]), seed=st.integers(0, 2**16))
def test_random_matrices(shape, seed):
    m, n = shape
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)) * rng.uniform(0.01, 100)
    x = rng.standard_normal((3, n))
    with jax.enable_x64(True):  # the shapes and dtype of the x64 tests: no new compilation
        mapping = map_matrix_svd(w)
        assert 0 <= np.min(mapping.attenuation) and np.max(mapping.attenuation) == 1.0
        np.testing.assert_allclose(reconstruct_matrix(mapping), w, atol=1e-12 * np.abs(w).max())
        np.testing.assert_allclose(apply_svd_mapping(mapping, x), x @ w.T, rtol=1e-10, atol=1e-10)


def test_float32_matrix_stays_float32():
    w = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    mapping = map_matrix_svd(w)
    assert mapping.attenuation.dtype == mapping.gain.dtype == jnp.float32
    assert mapping.input_mesh.theta.dtype == jnp.float32
    np.testing.assert_allclose(reconstruct_matrix(mapping), w, atol=2e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones(3), r"\[M, N\]"),
        (np.ones((0, 2)), "non-empty"),
        (np.ones((2, 2)) * 1j, "real"),
        (np.array([[1.0, np.nan]]), "NaN"),
    ],
)
def test_invalid_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        map_matrix_svd(bad)


def test_shape_errors_on_apply():
    mapping = map_matrix_svd(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 5\]"):
        apply_svd_mapping(mapping, np.ones((4, 3)))
    broken = mapping._replace(attenuation=jnp.ones(5))
    with pytest.raises(ValueError, match=r"attenuation of shape \(3,\)"):
        reconstruct_matrix(broken)


def test_mapping_is_a_pytree_and_apply_does_not_recompile():
    mapping = map_matrix_svd(np.arange(15.0).reshape(3, 5))
    assert isinstance(mapping, SVDMeshMapping)
    assert len(jax.tree.leaves(mapping)) == 6
    apply_svd_mapping(mapping, jnp.ones((2, 5)))
    size = apply_svd_mapping._cache_size()
    other = jax.tree.map(lambda a: a * 1.0, map_matrix_svd(np.ones((3, 5))))
    apply_svd_mapping(other, jnp.zeros((2, 5)))
    assert apply_svd_mapping._cache_size() == size
