import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optinc_jax import quantized_average
from optinc_jax.encoding import quantize as quantize_module
from optinc_jax.encoding.quantize import (
    block_exponents,
    dequantize_blocks,
    exponent_overhead,
    quantize_blocks,
    quantize_gradients,
    shared_block_exponents,
)

FLOAT32_ZERO_BLOCK_EXPONENT = -125


def _scales(exponents, bits, block_size, size):
    """Per-element f = (2^(B-1) - 1) / 2^e_max in float64, for bounds."""
    f = (2.0 ** (bits - 1) - 1) * 2.0 ** -np.asarray(exponents, np.float64)
    return np.repeat(f, block_size)[:size]


# Fixed shapes: every new shape would recompile, and hypothesis varies the values.
gradients = hnp.arrays(
    np.float32,
    (3, 50),
    elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
)


def test_block_exponents_known_values():
    g = jnp.array([0.3, -0.7, 1.0, 0.5, 0.0, 0.0, 3.0, -4.0, 2.0**-100])
    # blocks of 2: max 0.7 -> 0, max 1.0 -> 1, zeros, max 4 -> 3, 2^-100 -> -99
    chex.assert_trees_all_equal(
        block_exponents(g, block_size=2),
        jnp.array([0, 1, FLOAT32_ZERO_BLOCK_EXPONENT, 3, -99], jnp.int32),
    )


@given(gradients, st.sampled_from([1, 8, 256]))
def test_block_exponent_bounds_peak(g, block_size):
    e = np.asarray(block_exponents(g, block_size=block_size), np.float64)
    padded = np.zeros(len(e) * block_size, np.float64)
    padded[: g.size] = np.abs(g.reshape(-1))
    peak = padded.reshape(-1, block_size).max(axis=1)
    nonzero = peak > 0
    assert np.all(peak < 2.0**e)
    assert np.all(peak[nonzero] >= 2.0 ** (e[nonzero] - 1))


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("k", [-20, 0, 5])
def test_exact_powers_of_two(bits, k):
    g = jnp.array([2.0**k, -(2.0**k), 2.0 ** (k - 1), 0.0])
    e = block_exponents(g, block_size=4)
    chex.assert_trees_all_equal(e, jnp.array([k + 1], jnp.int32))
    u = quantize_blocks(g, e, bits=bits, block_size=4)
    q_max = 2 ** (bits - 1) - 1
    half = 2 ** (bits - 2)  # round(q_max / 2) with ties to even
    offset = 2 ** (bits - 1)
    expected = [offset + half, offset - half, offset + round(q_max / 4), offset]
    chex.assert_trees_all_equal(u, jnp.array(expected, jnp.int32))


@given(gradients, st.sampled_from([4, 8, 16]), st.sampled_from([1, 16]))
def test_round_trip_error_bound(g, bits, block_size):
    e = block_exponents(g, block_size=block_size)
    u = quantize_blocks(g, e, bits=bits, block_size=block_size)
    chex.assert_shape(u, g.shape)
    assert int(u.min()) >= 1 and int(u.max()) <= 2**bits - 1
    back = dequantize_blocks(u, e, bits=bits, block_size=block_size)
    f = _scales(e, bits, block_size, g.size).reshape(g.shape)
    error = np.abs(np.asarray(back, np.float64) - g.astype(np.float64))
    slack = 4 * np.finfo(np.float32).eps * 2.0 ** (bits - 1) / f  # float32 rounding of f g
    assert np.all(error <= 0.5 / f + slack)


def test_round_trip_float64(x64):
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 100)) * 10.0 ** rng.integers(-5, 5, size=(3, 1))
    e = block_exponents(g, block_size=16)
    u = quantize_blocks(g, e, bits=30, block_size=16)
    back = dequantize_blocks(u, e, bits=30, block_size=16, dtype=jnp.float64)
    f = _scales(e, 30, 16, g.size).reshape(g.shape)
    slack = 4 * np.finfo(np.float64).eps * 2.0**29 / f
    assert np.all(np.abs(np.asarray(back) - g) <= 0.5 / f + slack)


def test_shared_exponents_and_gradients():
    grads = jnp.array(
        [
            [0.1, 0.2, 0.0, 0.0, 8.0],
            [-3.0, 0.0, 0.0, 0.0, 0.5],
            [0.0, 0.4, 0.0, 0.0, -0.25],
        ]
    )
    per_server = jnp.stack([block_exponents(g, block_size=2) for g in grads])
    chex.assert_trees_all_equal(
        per_server,
        jnp.array([[-2, -125, 4], [2, -125, 0], [-1, -125, -1]], jnp.int32),
    )
    shared = shared_block_exponents(per_server)
    chex.assert_trees_all_equal(shared, jnp.array([2, -125, 4], jnp.int32))
    u, exponents = quantize_gradients(grads, bits=8, block_size=2)
    chex.assert_trees_all_equal(exponents, shared)
    for n in range(3):
        chex.assert_trees_all_equal(u[n], quantize_blocks(grads[n], shared, bits=8, block_size=2))
    # Block 0 uses e_max = 2, f = 127 / 4: -3 -> round(-95.25) = -95.
    assert int(u[1, 0]) == 128 - 95
    # The all-zero block quantizes to the offset everywhere.
    np.testing.assert_array_equal(np.asarray(u[:, 2:4]), 128)


@given(
    hnp.arrays(
        np.float32,
        (5, 40),
        elements=st.floats(-100, 100, width=32, allow_subnormal=False),
    ),
    st.sampled_from([8, 16]),
)
def test_mean_of_quantized_dequantizes_close_to_mean(grads, bits):
    block_size = 8
    u, e = quantize_gradients(grads, bits=bits, block_size=block_size)
    t = quantized_average(u)
    mean = dequantize_blocks(t, e, bits=bits, block_size=block_size)
    f = _scales(e, bits, block_size, grads.shape[1])
    error = np.asarray(mean, np.float64) - grads.astype(np.float64).mean(axis=0)
    # XLA's CPU backend flushes subnormal results to zero: an average below the smallest
    # normal float32 (found by hypothesis: one server at 2^-126, the rest 0) comes back 0.
    slack = 4 * np.finfo(np.float32).eps * 2.0 ** (bits - 1) / f + np.finfo(np.float32).tiny
    # rounding contributes [-0.5, 0.5] / f, the floor of the mean (-1, 0] / f
    assert np.all(error <= 0.5 / f + slack)
    assert np.all(error >= -1.5 / f - slack)


def test_quantize_gradients_compiles_once():
    rng = np.random.default_rng(1)
    before = quantize_module._quantize_gradients._cache_size()
    for _ in range(3):
        quantize_gradients(rng.normal(size=(4, 300)).astype(np.float32), bits=8, block_size=64)
    assert quantize_module._quantize_gradients._cache_size() == before + 1


def test_padding_removed():
    g = jnp.arange(10.0).reshape(2, 5)
    e = block_exponents(g, block_size=4)
    chex.assert_shape(e, (3,))
    u = quantize_blocks(g, e, bits=8, block_size=4)
    chex.assert_shape(u, (2, 5))
    chex.assert_shape(dequantize_blocks(u, e, bits=8, block_size=4), (2, 5))


def test_saturation_when_exponent_too_small():
    u = quantize_blocks(jnp.array([5.0, -5.0]), jnp.array([0]), bits=8, block_size=2)
    chex.assert_trees_all_equal(u, jnp.array([255, 1], jnp.int32))


def test_exponent_overhead():
    assert exponent_overhead(8, 256) == 8 / (256 * 8)
    assert round(100 * exponent_overhead(8, 256), 2) == 0.39
    assert exponent_overhead(16, 256, exponent_bits=8) == 1 / 512


def test_rejects():
    g = jnp.ones(4)
    e = jnp.array([1])
    with pytest.raises(ValueError, match="bits"):
        quantize_blocks(g, e, bits=7, block_size=4)
    with pytest.raises(ValueError, match="bits"):
        quantize_gradients(g[None], bits=32)
    with pytest.raises(ValueError, match="bits"):
        exponent_overhead(0, 256)
    with pytest.raises(ValueError, match="block_size"):
        block_exponents(g, block_size=0)
    with pytest.raises(ValueError, match="exponents must have shape"):
        quantize_blocks(g, jnp.array([1, 1]), bits=8, block_size=4)
    with pytest.raises(ValueError, match="floating dtype"):
        block_exponents(jnp.arange(4), block_size=4)
    with pytest.raises(ValueError, match="finite"):
        block_exponents(jnp.array([1.0, jnp.inf]), block_size=4)
    with pytest.raises(ValueError, match="t must lie in"):
        dequantize_blocks(jnp.array([256]), e, bits=8, block_size=4)
    with pytest.raises(ValueError, match="per_server_exponents"):
        shared_block_exponents(jnp.array([1, 2]))
