import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optinc_jax.photonics import approx
from optinc_jax.photonics.approx import (
    DiagUnitaryFactors,
    approx_diag_unitary,
    diag_unitary_factors,
    diag_unitary_residual,
    factors_to_matrix,
    merge_blocks,
    partition_blocks,
    relative_residual,
)

# A few shapes cover square, tall, wide, non-divisible and k = 1; every new shape compiles.
shapes = st.sampled_from([(1, 3), (3, 3), (6, 2), (5, 2), (2, 6), (3, 8), (9, 4)])
seeds = st.integers(0, 2**31 - 1)
sides = st.sampled_from(["left", "right"])
# The x64 fixture is set once for all examples of a test, which is what we want.
with_x64 = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def _random(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _orthogonal(k, rng):
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))


def _expected_diag_left(shape, side):
    """The documented rule: a padded last block carries its diagonal on its padded side."""
    k = min(shape)
    b = math.ceil(max(shape) / k)
    flags = [side == "left"] * b
    if b * k != max(shape):
        flags[-1] = shape[0] > shape[1]
    return np.array(flags)


def test_partition_layout_tall_with_padding():
    W = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    blocks = np.asarray(partition_blocks(W))
    chex.assert_shape(blocks, (3, 2, 2))
    np.testing.assert_array_equal(blocks[0], W[0:2])
    np.testing.assert_array_equal(blocks[1], W[2:4])
    np.testing.assert_array_equal(blocks[2], [[8.0, 9.0], [0.0, 0.0]])


def test_partition_layout_wide_with_padding():
    W = np.arange(14.0, dtype=np.float32).reshape(2, 7)
    blocks = np.asarray(partition_blocks(W))
    chex.assert_shape(blocks, (4, 2, 2))
    for j in range(3):
        np.testing.assert_array_equal(blocks[j], W[:, 2 * j : 2 * j + 2])
    np.testing.assert_array_equal(blocks[3], [[6.0, 0.0], [13.0, 0.0]])
    # Wide: the block outputs are summed, so W x is the sum of the blocks on their inputs.
    x = np.arange(1.0, 8.0, dtype=np.float32)
    x_padded = np.concatenate([x, np.zeros(1, np.float32)]).reshape(4, 2)
    np.testing.assert_allclose(np.einsum("bij,bj->i", blocks, x_padded), W @ x)


@given(st.integers(1, 12), st.integers(1, 12), seeds)
def test_partition_merge_round_trip(rows, cols, seed):
    W = _random((rows, cols), seed)
    blocks = partition_blocks(W)
    k = min(rows, cols)
    chex.assert_shape(blocks, (math.ceil(max(rows, cols) / k), k, k))
    np.testing.assert_array_equal(merge_blocks(blocks, W.shape), W)
    # The padding is zero: the blocks hold exactly the matrix's entries.
    np.testing.assert_allclose(np.sum(np.asarray(blocks) ** 2), np.sum(W**2), rtol=1e-6)


def test_merge_blocks_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"expected blocks of shape \(3, 2, 2\)"):
        merge_blocks(jnp.zeros((2, 2, 2)), (5, 2))
    with pytest.raises(ValueError, match="2-D matrix"):
        partition_blocks(jnp.zeros(3))


def test_known_2x2_value():
    # polar([[1, 1], [0, 1]]) = [[2, 1], [-1, 2]] / sqrt 5; d = (3, 2) / sqrt 5.
    W = jnp.array([[1.0, 1.0], [0.0, 1.0]])
    factors = diag_unitary_factors(W)
    chex.assert_trees_all_close(factors.diag, jnp.array([[3.0, 2.0]]) / jnp.sqrt(5.0), atol=1e-6)
    chex.assert_trees_all_close(
        factors.unitary, jnp.array([[[2.0, 1.0], [-1.0, 2.0]]]) / jnp.sqrt(5.0), atol=1e-6
    )
    expected = jnp.array([[6.0, 3.0], [-2.0, 4.0]]) / 5
    chex.assert_trees_all_close(approx_diag_unitary(W), expected, atol=1e-6)
    # Right side: columns, d_j = <u^j, w^j> = (2, 3) / sqrt 5.
    expected_right = jnp.array([[4.0, 3.0], [-2.0, 6.0]]) / 5
    chex.assert_trees_all_close(approx_diag_unitary(W, side="right"), expected_right, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "side"),
    [((4, 4), "left"), ((4, 4), "right"), ((8, 2), "right"), ((5, 2), "right"), ((2, 5), "left")],
)
def test_diag_left_flags_follow_documented_rule(shape, side):
    factors = diag_unitary_factors(_random(shape, 0), side=side)
    np.testing.assert_array_equal(factors.diag_left, _expected_diag_left(shape, side))
    assert factors.diag_left.dtype == jnp.bool_


@given(shapes, seeds, sides, st.sampled_from([0, 2]))
def test_idempotent(shape, seed, side, refine_steps):
    W = _random(shape, seed)
    once = approx_diag_unitary(W, side=side, refine_steps=refine_steps)
    twice = approx_diag_unitary(once, side=side, refine_steps=refine_steps)
    chex.assert_trees_all_close(twice, once, atol=2e-5 * max(1.0, float(jnp.abs(once).max())))


def _factored_matrix(shape, side, seed):
    """A random matrix exactly of block form diag(d) U (zero on any padding), in NumPy."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    k = min(shape)
    b = math.ceil(max(shape) / k)
    d = rng.uniform(0.2, 2.0, (b, k)) * rng.choice([-1.0, 1.0], (b, k))
    d[-1, k - (b * k - max(shape)) :] = 0.0  # padded rows/columns of the last block
    blocks = [
        d[j, :, None] * _orthogonal(k, rng) if left else _orthogonal(k, rng) * d[j, None, :]
        for j, left in enumerate(_expected_diag_left(shape, side))
    ]
    if rows >= cols:
        return np.concatenate(blocks, axis=0)[:rows], d
    return np.concatenate(blocks, axis=1)[:, :cols], d


@given(shapes, seeds, sides)
@with_x64
def test_exact_on_diag_times_unitary(x64, shape, seed, side):
    W, d = _factored_matrix(shape, side, seed)
    assert jnp.asarray(W).dtype == jnp.float64
    chex.assert_trees_all_close(approx_diag_unitary(W, side=side), W, atol=1e-10)
    factors = diag_unitary_factors(W, side=side)
    # The sign of each d_i may move into U; its magnitude is recovered.
    chex.assert_trees_all_close(jnp.abs(factors.diag), jnp.abs(jnp.asarray(d)), atol=1e-10)


@pytest.mark.parametrize("side", ["left", "right"])
def test_orthogonal_matrix_is_fixed(side):
    rng = np.random.default_rng(3)
    Q = _orthogonal(6, rng).astype(np.float32)
    chex.assert_trees_all_close(approx_diag_unitary(Q, side=side), Q, atol=1e-5)
    factors = diag_unitary_factors(Q, side=side)
    chex.assert_trees_all_close(factors.diag, jnp.ones((1, 6)), atol=1e-5)
    chex.assert_trees_all_close(factors.unitary[0], Q, atol=1e-5)
    # Stacked orthogonal blocks (a tall matrix) are fixed too.
    stacked = np.concatenate([Q, _orthogonal(6, rng).astype(np.float32)])
    chex.assert_trees_all_close(approx_diag_unitary(stacked, side=side), stacked, atol=1e-5)


def _block_errors(W, side, max_steps):
    return [
        float(jnp.linalg.norm(W - approx_diag_unitary(W, side=side, refine_steps=steps)))
        for steps in range(max_steps + 1)
    ]


@given(shapes, seeds, sides)
@with_x64
def test_refinement_never_increases_error(x64, shape, seed, side):
    W = _random(shape, seed, np.float64)
    errors = _block_errors(W, side, 4)
    for before, after in itertools.pairwise(errors):
        assert after <= before + 1e-12 * max(1.0, before)
    assert errors[-1] <= errors[0] + 1e-12


def test_refinement_helps_on_a_generic_matrix():
    W = _random((6, 6), 11, np.float64)
    errors = _block_errors(W, "left", 8)
    assert errors[-1] < errors[0] - 1e-3, errors  # strict improvement, not only no increase


@given(shapes, seeds, sides, st.sampled_from([0, 1]))
@with_x64
def test_diag_is_least_squares_for_its_unitary(x64, shape, seed, side, refine_steps):
    W = _random(shape, seed, np.float64)
    factors = diag_unitary_factors(W, side=side, refine_steps=refine_steps)
    blocks = np.asarray(partition_blocks(W))
    for j, block in enumerate(blocks):
        U = np.asarray(factors.unitary[j])
        if not factors.diag_left[j]:  # U diag(d): column-wise, i.e. rows of the transposes
            U, block = U.T, block.T
        for i in range(block.shape[0]):
            best, *_ = np.linalg.lstsq(U[i][:, None], block[i], rcond=None)
            np.testing.assert_allclose(factors.diag[j, i], best[0], atol=1e-12)


@given(shapes, seeds, sides)
def test_factors_rebuild_the_projection(shape, seed, side):
    W = _random(shape, seed)
    factors = diag_unitary_factors(W, side=side, refine_steps=1)
    U = np.asarray(factors.unitary)
    np.testing.assert_allclose(
        U @ U.swapaxes(1, 2), np.broadcast_to(np.eye(U.shape[-1]), U.shape), atol=1e-5
    )
    chex.assert_trees_all_close(
        factors_to_matrix(factors, W.shape),
        approx_diag_unitary(W, side=side, refine_steps=1),
        atol=1e-5,
    )


def test_dtypes_preserved(x64):
    for dtype in (jnp.float32, jnp.float64):
        W = jnp.asarray(_random((6, 4), 0), dtype)
        assert approx_diag_unitary(W).dtype == dtype
        assert diag_unitary_factors(W).unitary.dtype == dtype


def test_second_call_does_not_recompile():
    jitted = (approx._factors, approx._to_matrix)
    W1, W2 = _random((7, 3), 1), _random((7, 3), 2)
    approx_diag_unitary(W1, side="right", refine_steps=3)
    sizes = [f._cache_size() for f in jitted]
    approx_diag_unitary(W2, side="right", refine_steps=3)
    # side and refine_steps reach the compiled core as data: no recompilation either.
    approx_diag_unitary(W2, side="left", refine_steps=1)
    assert [f._cache_size() for f in jitted] == sizes
    approx_diag_unitary(_random((3, 7), 1))  # a new shape does compile
    assert [f._cache_size() for f in jitted] == [size + 1 for size in sizes]


def test_user_jit_traces_once_and_matches_eager():
    traces = []

    @functools.partial(jax.jit, static_argnames=("side",))
    def project(W, side):
        traces.append(side)
        return approx_diag_unitary(W, side=side, refine_steps=1)

    W1, W2 = _random((3, 8), 4), _random((3, 8), 5)
    chex.assert_trees_all_close(
        project(W1, "left"), approx_diag_unitary(W1, refine_steps=1), atol=1e-6
    )
    project(W2, "left")
    assert traces == ["left"]


def test_vmap_matches_loop():
    batch = np.stack([_random((5, 3), seed) for seed in range(4)])
    batched = jax.vmap(functools.partial(approx_diag_unitary, side="right", refine_steps=2))(batch)
    looped = jnp.stack([approx_diag_unitary(W, side="right", refine_steps=2) for W in batch])
    chex.assert_trees_all_close(batched, looped, atol=1e-5)


def test_nan_check_is_skipped_under_jit():
    W = jnp.full((2, 2), jnp.nan)
    assert bool(jnp.isnan(jax.jit(approx_diag_unitary)(W)).all())


@pytest.mark.parametrize(
    ("W", "kwargs", "match"),
    [
        (np.zeros(4, np.float32), {}, "2-D matrix"),
        (np.zeros((2, 2, 2), np.float32), {}, "2-D matrix"),
        (np.zeros((0, 3), np.float32), {}, "non-empty"),
        (np.array([[1.0, np.nan]], np.float32), {}, "NaN or inf"),
        (np.array([[1.0], [np.inf]], np.float32), {}, "NaN or inf"),
        (np.eye(2, dtype=np.int32), {}, "W must have a real floating dtype, got int32"),
        (np.eye(2, dtype=np.complex64), {}, "W must have a real floating dtype"),
        (np.eye(2, dtype=np.float32), {"side": "up"}, "side must be one of 'left', 'right'"),
        (np.eye(2, dtype=np.float32), {"side": None}, "side must be one of"),
        (np.eye(2, dtype=np.float32), {"refine_steps": -1}, "refine_steps must be an integer >= 0"),
        (np.eye(2, dtype=np.float32), {"refine_steps": 1.0}, "refine_steps"),
        (np.eye(2, dtype=np.float32), {"refine_steps": True}, "refine_steps"),
    ],
)
def test_rejects_bad_inputs(W, kwargs, match):
    with pytest.raises(ValueError, match=match):
        approx_diag_unitary(W, **kwargs)
    with pytest.raises(ValueError, match=match):
        diag_unitary_factors(W, **kwargs)


def test_numpy_integer_refine_steps_is_accepted():
    W = _random((4, 2), 0)
    chex.assert_trees_all_close(
        approx_diag_unitary(W, refine_steps=np.int64(2)), approx_diag_unitary(W, refine_steps=2)
    )


def test_factors_to_matrix_rejects_mismatched_shape():
    factors = diag_unitary_factors(_random((6, 2), 0))
    with pytest.raises(ValueError, match="do not fit shape"):
        factors_to_matrix(factors, (8, 2))


def test_factors_to_matrix_known_value():
    factors = DiagUnitaryFactors(
        diag=jnp.array([[1.0, 2.0], [3.0, 4.0]]),
        unitary=jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]),
        diag_left=jnp.array([True, False]),  # diag(1, 2) @ I, then swap @ diag(3, 4)
    )
    wide = factors_to_matrix(factors, (2, 4))
    np.testing.assert_array_equal(wide, [[1.0, 0.0, 0.0, 4.0], [0.0, 2.0, 3.0, 0.0]])
    tall = factors_to_matrix(factors, (3, 2))  # the second block's last row is cropped
    np.testing.assert_array_equal(tall, [[1.0, 0.0], [0.0, 2.0], [0.0, 4.0]])


@given(shapes, seeds, sides, st.sampled_from([0, 2]))
def test_residual_is_float_rounding_on_a_projected_matrix(shape, seed, side, refine_steps):
    projected = approx_diag_unitary(_random(shape, seed), side=side, refine_steps=refine_steps)
    residual = diag_unitary_residual(projected, side=side, refine_steps=refine_steps)
    assert residual.dtype == jnp.float32 and 0 <= float(residual) < 2e-6


@given(shapes, seeds, sides)
def test_residual_is_the_relative_distance_to_the_projection(shape, seed, side):
    W = _random(shape, seed)
    expected = np.linalg.norm(W - np.asarray(approx_diag_unitary(W, side=side), np.float64))
    expected /= np.linalg.norm(W.astype(np.float64))
    np.testing.assert_allclose(float(diag_unitary_residual(W, side=side)), expected, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_residual_sees_a_projection_rounded_to_tensorfloat32(side):
    # A GPU's default precision rounded the polar factor's inputs to 10 mantissa bits. As
    # a stand-in, the projected matrix's entries are rounded so: the residual sees them
    # off the diagonal x orthogonal form by far more than float32 rounding.
    def tf32(x):
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
        bits = (bits + jnp.uint32(0x0FFF) + ((bits >> 13) & 1)) & jnp.uint32(0xFFFFE000)
        return jax.lax.bitcast_convert_type(bits, jnp.float32)

    W = jnp.asarray(_random((64, 128), 5))
    exact = approx_diag_unitary(W, side=side)
    blocks = partition_blocks(exact)
    rounded = merge_blocks(tf32(blocks), exact.shape)
    assert float(diag_unitary_residual(exact, side=side)) < 2e-6
    assert float(diag_unitary_residual(rounded, side=side)) > 2e-5


def test_residual_of_zero_and_of_a_known_matrix():
    assert float(diag_unitary_residual(jnp.zeros((3, 5)))) == 0.0
    # [[1, 1], [0, 1]] projects to [[6, 3], [-2, 4]] / 5 (test_known_2x2_value): residual
    # ||[[-1, 2], [2, 1]] / 5|| / sqrt(3) = sqrt(10) / (5 sqrt(3)) = 0.36515
    value = float(diag_unitary_residual(jnp.array([[1.0, 1.0], [0.0, 1.0]])))
    assert value == pytest.approx(math.sqrt(10) / (5 * math.sqrt(3)), rel=1e-6)


@given(shapes, seeds, sides, st.floats(1e-3, 1e3))
def test_residual_is_the_relative_residual_to_the_projection_at_any_scale(shape, seed, side, c):
    W = jnp.asarray(_random(shape, seed))
    projected = approx_diag_unitary(W, side=side)
    expected = float(relative_residual(W, projected))
    assert float(diag_unitary_residual(W, side=side)) == pytest.approx(expected, rel=1e-5)
    scaled = float(relative_residual(c * W, c * projected))
    assert scaled == pytest.approx(expected, rel=1e-5)


def test_relative_residual_known_values_and_shapes():
    W = jnp.array([[3.0, 4.0]])
    assert float(relative_residual(W, W)) == 0.0
    assert float(relative_residual(W, jnp.zeros((1, 2)))) == pytest.approx(1.0)
    assert float(relative_residual(W, -W)) == pytest.approx(2.0)
    assert float(relative_residual(jnp.zeros((2, 2)), jnp.ones((2, 2)))) == 0.0
    with pytest.raises(ValueError, match=r"shape \(2, 1\); expected the shape of W, \(1, 2\)"):
        relative_residual(W, W.T)
