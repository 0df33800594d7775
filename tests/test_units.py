import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optinc_jax import (
    encode_pam4,
    preprocess,
    quantized_average,
    receiver,
    reconstruct_average,
    split_to_servers,
)


def test_quantized_average_known_values():
    u = jnp.array([[0, 5, 255], [1, 6, 255], [1, 7, 254]])
    chex.assert_trees_all_equal(quantized_average(u), jnp.array([0, 6, 254], jnp.int32))


@given(st.sampled_from([1, 2, 9]), st.lists(st.integers(0, 2**30 - 1), min_size=1, max_size=9))
def test_quantized_average_exact_without_overflow(servers, row):
    # Values near 2^30 summed over several servers would overflow a plain int32 sum.
    values = np.resize(np.array(row, np.int64), servers)
    u = np.stack([values, np.full(servers, 2**30 - 1), np.arange(servers)], axis=1)
    expected = u.sum(axis=0) // servers  # int64, exact
    np.testing.assert_array_equal(quantized_average(u.astype(np.int32)), expected)


def test_quantized_average_rejects():
    with pytest.raises(ValueError, match="integer dtype"):
        quantized_average(jnp.array([[1.0]]))
    with pytest.raises(ValueError, match="u must lie in"):
        quantized_average(jnp.array([[-1, 2]]))


def test_preprocess_known_values():
    # r = 2: x_0 = (1/2) [(3 + 4*1) + (1 + 4*1)] = 6, x_1 = (1/2) [(0 + 4*2) + (2 + 4*2)] = 9.
    s = jnp.array([[3, 1, 0, 2], [1, 1, 2, 2]])
    chex.assert_trees_all_equal(preprocess(s, inputs=2), jnp.array([6.0, 9.0], jnp.float32))
    # r = 1, three servers: x_m = mean of column m.
    s = jnp.array([[3, 0, 1, 2], [0, 0, 1, 3], [1, 0, 1, 3]])
    chex.assert_trees_all_close(
        preprocess(s), jnp.array([4 / 3, 0.0, 1.0, 8 / 3], jnp.float32), rtol=0, atol=0
    )


@pytest.mark.parametrize(("bits", "inputs", "servers"), [(8, 4, 3), (16, 4, 4), (12, 3, 7)])
@given(data=st.data())
def test_sum_identity(bits, inputs, servers, data):
    # sum_n u_n == sum_m (4^r)^m (N x_m), so t = floor(that / N) is a function of x.
    u = data.draw(hnp.arrays(np.int32, (servers, 16), elements=st.integers(0, 2**bits - 1)))
    x = np.asarray(
        jax.vmap(lambda s: preprocess(s, inputs=inputs), in_axes=1)(encode_pam4(u, bits=bits))
    )
    counts = np.rint(x * np.float32(servers)).astype(np.int64)  # [16, I] = N x_m
    # x lies exactly on the grid {0, 1/N, ..., 4^r - 1}.
    np.testing.assert_array_equal(x, counts.astype(np.float32) * np.float32(1 / servers))
    r = bits // 2 // inputs
    assert counts.min() >= 0 and counts.max() <= servers * (4**r - 1)
    total = counts @ ((4**r) ** np.arange(inputs))
    np.testing.assert_array_equal(u.astype(np.int64).sum(axis=0), total)
    np.testing.assert_array_equal(quantized_average(u), total // servers)


def test_preprocess_vmaps_and_rejects():
    s = encode_pam4(jnp.arange(12).reshape(3, 4), bits=4)  # [values, servers, K]
    x = jax.vmap(lambda v: preprocess(v, inputs=2))(s)
    chex.assert_shape(x, (3, 2))
    with pytest.raises(ValueError, match="divisible by inputs = 3"):
        preprocess(jnp.zeros((2, 4), jnp.int32), inputs=3)
    with pytest.raises(ValueError, match="symbols must lie in"):
        preprocess(jnp.array([[4, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        preprocess(jnp.zeros(4, jnp.int32))


def test_receiver_thresholds_and_saturation():
    y = jnp.array([-5.0, 0.49, 0.51, 1.49, 1.51, 2.49, 2.51, 3.0, 40.0])
    chex.assert_trees_all_equal(receiver(y), jnp.array([0, 0, 1, 1, 2, 2, 3, 3, 3], jnp.int32))


@given(st.integers(0, 2**16 - 1), st.lists(st.floats(-0.45, 0.45), min_size=8, max_size=8))
def test_reconstruct_noisy_symbols(t, noise):
    y = encode_pam4(jnp.array(t), bits=16).astype(jnp.float32) + jnp.array(noise, jnp.float32)
    assert int(reconstruct_average(receiver(y))) == t


@pytest.mark.parametrize("servers", [1, 4, 16])
def test_split_power_and_identical_decoding(servers):
    y = jnp.array([2.9, 0.2, 1.1, 3.4])
    bare = split_to_servers(y, servers, receiver_gain=1.0)
    chex.assert_shape(bare, (servers, 4))
    # Lossless splitter: total output power equals input power, 1/N per output.
    chex.assert_trees_all_close(jnp.sum(bare**2, axis=0), y**2, rtol=1e-6)
    chex.assert_trees_all_close(bare[0] ** 2, y**2 / servers, rtol=1e-6)
    received = split_to_servers(y, servers)
    chex.assert_trees_all_close(received, jnp.broadcast_to(y, (servers, 4)), rtol=1e-6)
    t_hat = reconstruct_average(receiver(received))
    chex.assert_trees_all_equal(t_hat, jnp.full(servers, 3 + 0 + 16 + 3 * 64, jnp.int32))


@pytest.mark.parametrize(("bits", "inputs", "servers"), [(8, 4, 4), (16, 4, 3)])
def test_pipeline_with_ideal_onn(bits, inputs, servers):
    # servers -> PAM4 -> preprocess -> ideal ONN (exact function of x) -> split -> receivers.
    rng = np.random.default_rng(bits + servers)
    u = rng.integers(0, 2**bits, size=(servers, 64), dtype=np.int32)
    x = jax.vmap(lambda s: preprocess(s, inputs=inputs), in_axes=1)(encode_pam4(u, bits=bits))
    r = bits // 2 // inputs
    counts = jnp.rint(x * servers).astype(jnp.int32)
    t_onn = jnp.sum(counts * (4**r) ** jnp.arange(inputs)[None, :], axis=1) // servers
    y = encode_pam4(t_onn, bits=bits).astype(jnp.float32)  # [64, K] output amplitudes
    received = jax.vmap(lambda v: split_to_servers(v, servers))(y)  # [64, servers, K]
    t_hat = reconstruct_average(receiver(received))  # [64, servers]
    expected = quantized_average(u)
    chex.assert_trees_all_equal(t_hat, jnp.broadcast_to(expected[:, None], (64, servers)))


def test_split_rejects():
    with pytest.raises(ValueError, match="servers"):
        split_to_servers(jnp.ones(4), 0)
    with pytest.raises(ValueError, match="shape"):
        split_to_servers(jnp.ones((2, 4)), 2)
