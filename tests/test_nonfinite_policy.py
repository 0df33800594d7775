"""The documented non-finite policy: under jit nothing invalid becomes a valid-looking value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import (
    INVALID_CODE,
    INVALID_SYMBOL,
    NONFINITE_EXPONENT,
    block_exponents,
    decode_pam4,
    dequantize_blocks,
    encode_pam4,
    evaluate_exhaustive,
    make_dataset_spec,
    map_matrix_svd,
    nonfinite_blocks,
    pam4_levels,
    preprocess,
    quantize_blocks,
    quantize_gradients,
    receiver,
    reconstruct_matrix,
)

BLOCK = 4


def _poisoned_gradients(bad: float) -> jnp.ndarray:
    """Two servers, three blocks of 4; server 1's middle block holds one ``bad`` value."""
    grads = jnp.arange(24, dtype=jnp.float32).reshape(2, 12) / 7 - 1.5
    return grads.at[1, 5].set(bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_value_poisons_only_its_block_on_every_server(bad):
    grads = _poisoned_gradients(bad)
    u, exponents = jax.jit(lambda g: quantize_gradients(g, bits=8, block_size=BLOCK))(grads)
    u, exponents = np.asarray(u), np.asarray(exponents)
    np.testing.assert_array_equal(nonfinite_blocks(exponents), [False, True, False])
    assert int(exponents[1]) == NONFINITE_EXPONENT
    # the poisoned block carries the zero code, valid integers, on both servers
    np.testing.assert_array_equal(u[:, 4:8], 128)
    # the finite blocks are exactly what they are without the bad value
    clean_u, clean_e = map(
        np.asarray, quantize_gradients(_poisoned_gradients(0.0), bits=8, block_size=BLOCK)
    )
    np.testing.assert_array_equal(exponents[[0, 2]], clean_e[[0, 2]])
    np.testing.assert_array_equal(
        u[:, [0, 1, 2, 3, 8, 9, 10, 11]], clean_u[:, [0, 1, 2, 3, 8, 9, 10, 11]]
    )
    average = jax.jit(lambda t, e: dequantize_blocks(t, e, bits=8, block_size=BLOCK))(
        u[0], exponents
    )
    assert np.all(np.isnan(average[4:8]))
    assert np.all(np.isfinite(average[:4])) and np.all(np.isfinite(average[8:]))


def test_an_all_nan_block_no_longer_saturates_its_neighbours():
    """The defect: an all-NaN block dropped its exponent and finite values saturated."""
    g = jnp.array([0.25, -0.5, 0.75, 1.0, np.nan, np.nan, np.nan, np.nan], jnp.float32)
    exponents = jax.jit(lambda x: block_exponents(x, block_size=BLOCK))(g)
    assert int(exponents[0]) == 1 and int(exponents[1]) == NONFINITE_EXPONENT
    u = jax.jit(lambda x, e: quantize_blocks(x, e, bits=8, block_size=BLOCK))(g, exponents)
    np.testing.assert_array_equal(u[:4], [144, 96, 176, 192])


def test_eager_calls_still_refuse_nonfinite_gradients():
    with pytest.raises(ValueError, match="finite"):
        quantize_gradients(_poisoned_gradients(np.nan), bits=8, block_size=BLOCK)


@given(st.lists(st.integers(-1000, 1300), min_size=1, max_size=20))
def test_traced_pam4_carries_out_of_range_values_as_invalid(values):
    u = jnp.asarray(values, jnp.int32)
    symbols = jax.jit(lambda x: encode_pam4(x, bits=10))(u)
    valid = (u >= 0) & (u < 1024)
    np.testing.assert_array_equal(np.all(symbols == INVALID_SYMBOL, axis=-1), ~valid)
    decoded = jax.jit(decode_pam4)(symbols)
    np.testing.assert_array_equal(decoded, np.where(valid, u, INVALID_CODE))
    levels = jax.jit(pam4_levels)(symbols)
    np.testing.assert_array_equal(np.all(np.isnan(levels), axis=-1), ~valid)


def test_invalid_symbols_and_amplitudes_do_not_decode():
    symbols = jnp.array([[3, 1, 0, 2], [1, INVALID_SYMBOL, 2, 2]], jnp.int32)
    x = jax.jit(lambda s: preprocess(s, inputs=2))(symbols)
    assert np.isnan(x[0]) and float(x[1]) == 9.0
    received = receiver(jnp.array([2.9, np.nan, np.inf, -np.inf, 0.2]))
    np.testing.assert_array_equal(received, [3, -1, -1, -1, 0])
    with pytest.raises(ValueError, match="s"):  # eagerly, an invalid symbol is refused
        decode_pam4(jnp.array([-1, 0, 0, 0]))
    assert int(jax.jit(decode_pam4)(received[:4])) == INVALID_CODE


def test_evaluation_never_counts_a_nonfinite_output_as_correct():
    dataset = make_dataset_spec(bits=4, servers=2, inputs=2)

    def nan_network(params, x):
        return jnp.full((x.shape[0], 2), jnp.nan) * params

    result = evaluate_exhaustive(nan_network, jnp.float32(1), dataset)
    assert result.correct == 0 and result.accuracy == 0.0
    assert result.invalid == dataset.size and result.error_histogram == {}
    assert result.to_json()["invalid"] == dataset.size


def test_evaluation_counts_invalid_outputs_beside_the_histogram():
    dataset = make_dataset_spec(bits=4, servers=2, inputs=2)

    def half_nan(params, x):
        zeros = jnp.zeros((x.shape[0], 2)) + params
        return jnp.where(x[:, :1] > 1, jnp.nan, zeros)

    result = evaluate_exhaustive(half_nan, jnp.float32(0), dataset)
    assert result.invalid > 0
    assert result.correct + result.invalid + sum(result.error_histogram.values()) == dataset.size


def test_svd_mapping_of_entries_near_the_float32_maximum():
    w = jnp.array([[3e38, 0.0, 1e30], [0.0, -1e38, 0.0]], jnp.float32)
    mapping = map_matrix_svd(w)
    assert np.isfinite(float(mapping.gain)) and np.all(np.isfinite(mapping.attenuation))
    np.testing.assert_allclose(reconstruct_matrix(mapping), w, rtol=1e-5, atol=3e38 * 1e-6)
    with pytest.raises(ValueError, match="overflows float32"):
        map_matrix_svd(jnp.full((2, 2), 3e38, jnp.float32))
