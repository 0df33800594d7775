import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import givens_rotation, mzi_transfer

angles = st.floats(-10.0, 10.0, allow_nan=False)


def test_bar_state_is_diag_phase_one():
    phi = 0.7
    t = mzi_transfer(0.0, phi)
    chex.assert_trees_all_close(t, jnp.array([[np.exp(1j * phi), 0], [0, 1]]), atol=1e-7)


def test_cross_state_swaps_modes():
    phi = -1.3
    t = mzi_transfer(jnp.pi / 2, phi)
    chex.assert_trees_all_close(t, jnp.array([[0, -1], [np.exp(1j * phi), 0]]), atol=1e-7)


def test_known_value_at_quarter_pi():
    # theta = pi/4, phi = pi/2: [[i/sqrt2, -1/sqrt2], [i/sqrt2, 1/sqrt2]]
    r = 1 / np.sqrt(2)
    expected = jnp.array([[1j * r, -r], [1j * r, r]])
    chex.assert_trees_all_close(mzi_transfer(jnp.pi / 4, jnp.pi / 2), expected, atol=1e-7)


def test_phi_acts_on_the_upper_input_only():
    # Light entering only the lower input never sees the external phase shifter.
    lower = jnp.array([0.0, 1.0])
    chex.assert_trees_all_close(
        mzi_transfer(0.4, 0.0) @ lower, mzi_transfer(0.4, 2.1) @ lower, atol=1e-7
    )
    upper = jnp.array([1.0, 0.0])
    chex.assert_trees_all_close(
        mzi_transfer(0.4, 2.1) @ upper, np.exp(2.1j) * (mzi_transfer(0.4, 0.0) @ upper), atol=1e-6
    )


@given(theta=angles, phi=angles)
def test_transfer_is_unitary_with_det_exp_i_phi(theta, phi):
    t = np.asarray(mzi_transfer(theta, phi), np.complex128)
    np.testing.assert_allclose(t.conj().T @ t, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(t), np.exp(1j * np.float32(phi)), atol=1e-6)


def test_broadcasting_over_leading_dims():
    theta = jnp.linspace(0.0, 1.0, 3)[:, None]
    phi = jnp.linspace(0.0, 2.0, 4)
    t = mzi_transfer(theta, phi)
    chex.assert_shape(t, (3, 4, 2, 2))
    chex.assert_trees_all_close(t[2, 1], mzi_transfer(theta[2, 0], phi[1]))


def test_givens_is_transfer_at_zero_phase():
    theta = jnp.array([-2.0, 0.3, 1.1])
    g = givens_rotation(theta)
    chex.assert_shape(g, (3, 2, 2))
    assert not jnp.iscomplexobj(g)
    chex.assert_trees_all_close(g.astype(jnp.complex64), mzi_transfer(theta, 0.0), atol=1e-7)
    chex.assert_trees_all_close(
        givens_rotation(jnp.pi / 2), jnp.array([[0.0, -1.0], [1.0, 0.0]]), atol=1e-7
    )


# XLA on CPU flushes subnormal numbers to zero, and whether an intermediate is flushed
# depends on how the computation is fused: bitwise equality holds for normal angles only.
normal_angles = angles.filter(lambda theta: theta == 0 or abs(theta) >= 1e-30)


@given(theta=normal_angles)
def test_givens_is_exactly_the_real_part_of_the_transfer(theta):
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            t = jnp.asarray([theta, -theta, 0.5 * theta], dtype)
            transfer = mzi_transfer(t, jnp.zeros_like(t))
            np.testing.assert_array_equal(transfer.imag, 0.0)
            np.testing.assert_array_equal(givens_rotation(t), transfer.real)
            assert givens_rotation(t).dtype == dtype


def test_integer_angles_give_the_default_float_dtype():
    assert givens_rotation(jnp.array([0, 1])).dtype == jnp.float32
    chex.assert_trees_all_close(givens_rotation(0), jnp.eye(2))


def test_float64_gives_complex128(x64):
    assert mzi_transfer(jnp.float64(0.1), jnp.float64(0.2)).dtype == jnp.complex128
    assert givens_rotation(jnp.float64(0.1)).dtype == jnp.float64


def test_jit_and_vmap():
    theta = jnp.array([0.1, 0.2])
    phi = jnp.array([0.3, 0.4])
    chex.assert_trees_all_close(
        jax.vmap(jax.jit(mzi_transfer))(theta, phi), mzi_transfer(theta, phi)
    )
