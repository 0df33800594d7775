import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import givens_rotation, mzi_transfer
from optinc_jax.photonics import decompose
from optinc_jax.photonics.decompose import decompose_clements, decompose_orthogonal
from optinc_jax.photonics.mesh import (
    ClementsPhases,
    OrthogonalPhases,
    clements_unitary,
    mzi_count,
    orthogonal_matrix,
)


def haar_unitary(n, seed):
    """Haar-random unitary: QR of a complex Gaussian matrix with the phases of R fixed."""
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diagonal(r)
    return q * (d / np.abs(d))


def haar_orthogonal(n, seed, det):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diagonal(r))
    if np.sign(np.linalg.det(q)) != det:
        q[:, 0] = -q[:, 0]
    return q


def max_error(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) if np.size(a) else 0.0


@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_round_trip_haar_float64(n, seed):
    u = haar_unitary(n, seed)
    with jax.enable_x64(True):
        phases = decompose_clements(u)
        assert phases.theta.dtype == jnp.float64
        assert phases.theta.shape == phases.phi.shape == (mzi_count(n),)
        assert max_error(clements_unitary(phases), u) < 1e-12


@pytest.mark.parametrize("n", [64, 256])
def test_round_trip_large_float64(n, x64):
    u = haar_unitary(n, n)
    phases = decompose_clements(u)
    assert max_error(clements_unitary(phases), u) < 1e-10


@pytest.mark.parametrize("n", [5, 64])
def test_round_trip_float32(n):
    u = haar_unitary(n, 100 + n).astype(np.complex64)
    phases = decompose_clements(u)
    assert phases.theta.dtype == jnp.float32
    assert max_error(clements_unitary(phases), u) < 1e-4


def test_phase_ranges(x64):
    phases = decompose_clements(haar_unitary(9, 1))
    assert np.all((0 <= phases.theta) & (phases.theta <= np.pi / 2))
    for p in (phases.phi, phases.output_phase):
        assert np.all((0 <= p) & (p < 2 * np.pi))


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_special_matrices_with_exact_zeros(n, x64):
    rng = np.random.default_rng(n)
    cases = [
        np.eye(n),
        -np.eye(n),
        np.eye(n)[rng.permutation(n)],
        np.eye(n)[::-1] * 1j,
        np.diag(np.exp(1j * rng.uniform(0, 2 * np.pi, n))),
    ]
    for u in cases:
        assert max_error(clements_unitary(decompose_clements(u)), u) < 1e-12


def test_identity_needs_no_mixing(x64):
    phases = decompose_clements(np.eye(6))
    np.testing.assert_allclose(np.sin(phases.theta), 0.0, atol=1e-15)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_real_orthogonal_input_to_complex_decomposition(n, x64):
    q = haar_orthogonal(n, n, det=-1)
    u = clements_unitary(decompose_clements(q))
    assert u.dtype == jnp.complex128
    assert max_error(u, q) < 1e-12


@pytest.mark.parametrize("det", [1, -1])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_orthogonal_round_trip(n, det, x64):
    if n == 1 and det == 1:
        q = np.eye(1)
    else:
        q = haar_orthogonal(n, 10 * n, det)
    assert np.isclose(np.linalg.det(q), det)
    phases = decompose_orthogonal(q)
    assert isinstance(phases, OrthogonalPhases)
    assert set(np.asarray(phases.output_sign).tolist()) <= {-1.0, 1.0}
    assert max_error(orthogonal_matrix(phases), q) < 1e-12


def test_orthogonal_round_trip_float32_and_large(x64):
    q = haar_orthogonal(64, 3, det=1)
    assert max_error(orthogonal_matrix(decompose_orthogonal(q)), q) < 1e-12
    q32 = haar_orthogonal(5, 4, det=-1).astype(np.float32)
    with jax.enable_x64(False):
        phases = decompose_orthogonal(q32)
        assert phases.theta.dtype == jnp.float32
        assert max_error(orthogonal_matrix(phases), q32) < 1e-5


def test_orthogonal_special_matrices(x64):
    for q in [np.eye(4)[[2, 0, 3, 1]], -np.eye(3), np.diag([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 1.0])]:
        assert max_error(orthogonal_matrix(decompose_orthogonal(q)), q) < 1e-12


# ------------------------------------------------------------ the MZI convention

angles = st.floats(-7.0, 7.0, allow_nan=False)
entries = st.complex_numbers(max_magnitude=10.0, allow_nan=False, allow_infinity=False)


@given(x=entries, y=entries)
def test_step_angles_null_their_entry_with_mzi_transfer(x, y):
    """Row steps apply T = mzi_transfer(theta, phi), column steps T^H, from their angles."""
    h = np.hypot(abs(x), abs(y))
    with jax.enable_x64(True):
        pair = jnp.array([x, y], jnp.complex128)
        theta, phi = decompose._row_angles(pair[0], pair[1], real=False)
        assert 0 <= theta <= np.pi / 2
        out = np.asarray(mzi_transfer(theta, phi) @ pair)
        assert abs(out[1]) <= 1e-14 * max(h, 1) and np.isclose(abs(out[0]), h)
        theta, phi = decompose._column_angles(pair[0], pair[1], real=False)
        assert 0 <= theta <= np.pi / 2
        out = np.asarray(pair @ jnp.conj(mzi_transfer(theta, phi)).T)
        assert abs(out[0]) <= 1e-14 * max(h, 1) and np.isclose(abs(out[1]), h)
        real = jnp.array([x.real, y.real])
        (theta,) = decompose._row_angles(real[0], real[1], real=True)
        out = np.asarray(givens_rotation(theta) @ real)
        assert abs(out[1]) <= 1e-14 * max(h, 1)
        (theta,) = decompose._column_angles(real[0], real[1], real=True)
        out = np.asarray(real @ givens_rotation(theta).T)
        assert abs(out[0]) <= 1e-14 * max(h, 1)


def test_step_angles_of_a_zero_pair_do_not_mix(x64):
    zero = jnp.complex128(0)
    for step in (decompose._row_angles, decompose._column_angles):
        theta, _ = step(zero, zero, real=False)
        assert float(theta) == 0.0
        (theta,) = step(zero.real, zero.real, real=True)
        assert float(theta) == 0.0


@given(theta=angles, phi=angles, a1=angles, a2=angles)
def test_commutation_through_the_diagonal_holds_for_the_convention(theta, phi, a1, a2):
    """T(theta, phi)^-1 D = D' T(theta, phi'): the identity decompose_clements relies on."""
    d1, d2 = np.exp(1j * a1), np.exp(1j * a2)
    with jax.enable_x64(True):
        t = np.asarray(mzi_transfer(theta, phi))
        moved = np.asarray(mzi_transfer(theta, np.angle(-d1 / d2)))
    lhs = np.linalg.inv(t) @ np.diag([d1, d2])
    rhs = np.diag([-np.exp(-1j * phi) * d2, d2]) @ moved
    np.testing.assert_allclose(lhs, rhs, atol=1e-12)


@pytest.mark.parametrize("d1, d2", [(1, 1), (1, -1), (-1, 1), (-1, -1)])
def test_real_commutation_through_the_signs(d1, d2, x64):
    """G(theta)^-1 D = D G(-d1 d2 theta) for D = diag(+-1): what decompose_orthogonal uses."""
    theta = 0.7
    d = np.diag([d1, d2]).astype(float)
    lhs = np.linalg.inv(np.asarray(givens_rotation(theta))) @ d
    np.testing.assert_allclose(lhs, d @ np.asarray(givens_rotation(-d1 * d2 * theta)), atol=1e-15)


# --------------------------------------------------------------------- input checks


def test_non_unitary_names_deviation_and_tolerance(x64):
    u = 1.01 * haar_unitary(4, 0)
    with pytest.raises(ValueError, match=r"max\|u\^H u - I\| = 2\.0\d*e-02.*atol = 4\.000e-08"):
        decompose_clements(u)
    with pytest.raises(ValueError, match=r"q is not unitary"):
        decompose_orthogonal(np.array([[1.0, 0.5], [0.0, 1.0]]))


def test_atol_is_used(x64):
    u = haar_unitary(3, 0) * (1 + 1e-6)
    with pytest.raises(ValueError):
        decompose_clements(u)
    for bad in (-1e-3, float("nan"), "1e-3"):
        with pytest.raises(ValueError, match="atol must be a finite number in"):
            decompose_clements(u, atol=bad)
    phases = decompose_clements(u, atol=1e-5)
    assert max_error(clements_unitary(phases), u) < 1e-5


def test_default_tolerance_is_looser_in_float32():
    u = (haar_unitary(5, 2) * (1 + 1e-6)).astype(np.complex64)
    decompose_clements(u)  # 2e-6 deviation is fine for 32-bit input (atol 5e-4)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((2, 2), np.nan), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.ones((2, 3)), "square"),
        (np.ones(3), "square"),
        (np.ones((0, 0)), "n >= 1"),
    ],
)
def test_invalid_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        decompose_clements(bad)
    with pytest.raises(ValueError, match=match):
        decompose_orthogonal(bad)


def test_orthogonal_rejects_complex():
    with pytest.raises(ValueError, match="must be real"):
        decompose_orthogonal(np.eye(2) * 1j)


def test_no_recompilation_on_second_call():
    core = decompose._decompose_clements_core
    decompose_clements(haar_unitary(5, 0).astype(np.complex64))
    size = core._cache_size()
    decompose_clements(haar_unitary(5, 1).astype(np.complex64))
    assert core._cache_size() == size


def test_result_is_a_pytree_that_jits():
    phases = decompose_clements(haar_unitary(5, 3).astype(np.complex64))
    assert isinstance(phases, ClementsPhases)
    doubled = jax.jit(lambda p: jax.tree.map(lambda a: 2 * a, p))(phases)
    chex.assert_trees_all_close(doubled.theta, 2 * phases.theta)
