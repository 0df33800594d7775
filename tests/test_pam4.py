import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import decode_pam4, encode_pam4, num_symbols, pam4_levels


def test_num_symbols():
    assert [num_symbols(b) for b in (2, 8, 16, 30)] == [1, 4, 8, 15]


@pytest.mark.parametrize("bits", [0, 1, 7, 31, 32, 2.0, True])
def test_num_symbols_rejects(bits):
    with pytest.raises(ValueError, match="bits"):
        num_symbols(bits)


def test_encode_known_values():
    # 0xB4 = 10 11 01 00 -> symbols (lsb first) 0, 1, 3, 2.
    chex.assert_trees_all_equal(
        encode_pam4(jnp.array(0xB4), bits=8), jnp.array([0, 1, 3, 2], jnp.int32)
    )
    s = encode_pam4(jnp.array([[0, 65535], [4096, 3]]), bits=16)
    chex.assert_shape(s, (2, 2, 8))
    np.testing.assert_array_equal(s[0, 0], np.zeros(8))
    np.testing.assert_array_equal(s[0, 1], np.full(8, 3))
    np.testing.assert_array_equal(s[1, 0], [0, 0, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(s[1, 1], [3, 0, 0, 0, 0, 0, 0, 0])


def test_encode_matches_floor_division():
    u = np.arange(2**10)
    s = np.asarray(encode_pam4(u, bits=10))
    expected = np.stack([(u // 4**k) % 4 for k in range(5)], axis=-1)
    np.testing.assert_array_equal(s, expected)


@given(bits=st.sampled_from([2, 8, 16, 30]), data=st.data())
def test_round_trip(bits, data):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=8, max_size=8))
    u = jnp.array(values, jnp.int32).reshape(2, 4)
    s = encode_pam4(u, bits=bits)
    assert s.min() >= 0 and s.max() <= 3
    chex.assert_trees_all_equal(decode_pam4(s), u)


@given(st.sampled_from([1, 4, 15]), st.data())
def test_decode_encode_round_trip(count, data):
    symbols = data.draw(st.lists(st.integers(0, 3), min_size=count, max_size=count))
    s = jnp.array(symbols, jnp.int32)
    chex.assert_trees_all_equal(encode_pam4(decode_pam4(s), bits=2 * len(symbols)), s)


def test_encode_rejects():
    with pytest.raises(ValueError, match="u must lie in"):
        encode_pam4(jnp.array([0, 256]), bits=8)
    with pytest.raises(ValueError, match="u must lie in"):
        encode_pam4(jnp.array([-1]), bits=8)
    with pytest.raises(ValueError, match="integer dtype"):
        encode_pam4(jnp.array([1.0]), bits=8)
    with pytest.raises(ValueError, match="bits"):
        encode_pam4(jnp.array([1]), bits=7)
    # Checked before conversion to int32, which would wrap 2^40 to 0.
    with pytest.raises(ValueError, match="u must lie in"):
        encode_pam4(np.array([2**40]), bits=8)


def test_encode_jittable_without_range_check():
    f = jax.jit(lambda u: encode_pam4(u, bits=4))
    chex.assert_trees_all_equal(f(jnp.array([9])), jnp.array([[1, 2]], jnp.int32))


def test_decode_rejects():
    with pytest.raises(ValueError, match="s must lie in"):
        decode_pam4(jnp.array([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        decode_pam4(jnp.zeros(16, jnp.int32))
    with pytest.raises(ValueError, match="integer dtype"):
        decode_pam4(jnp.array([0.0]))


def test_pam4_levels():
    chex.assert_trees_all_close(
        pam4_levels(jnp.arange(4)), jnp.array([0.0, 1 / 3, 2 / 3, 1.0], jnp.float32)
    )
    with pytest.raises(ValueError, match="s must lie in"):
        pam4_levels(jnp.array([5]))
