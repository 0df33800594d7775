import functools

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import givens_rotation, mzi_transfer
from optinc_jax.photonics.mesh import (
    ClementsPhases,
    OrthogonalPhases,
    apply_clements,
    apply_orthogonal,
    clements_layout,
    clements_unitary,
    mzi_count,
    orthogonal_matrix,
    propagate_columns,
    random_clements_phases,
    random_orthogonal_phases,
)


def brute_force_unitary(theta, phi, output_phase, transfer=mzi_transfer):
    """Product of identity-padded n x n MZI matrices, in layout order (test-only)."""
    n = len(output_phase)
    column, top = clements_layout(n)
    blocks = np.asarray(transfer(np.asarray(theta), np.asarray(phi)))  # [m, 2, 2]
    u = np.eye(n, dtype=complex)
    for k in range(len(column)):
        t = np.eye(n, dtype=complex)
        t[top[k] : top[k] + 2, top[k] : top[k] + 2] = blocks[k]
        u = t @ u
    return np.diag(np.exp(1j * np.asarray(output_phase))) @ u


def lossy_transfer(theta, phi):
    """An MZI that transmits 80 % of the power (-0.97 dB), otherwise ideal."""
    return jnp.sqrt(0.8) * mzi_transfer(theta, phi)


def _coupler(alpha):
    """Directional coupler of splitting angle ``alpha`` (``pi / 4``: 50:50)."""
    c, s = jnp.cos(alpha), 1j * jnp.sin(alpha)
    return jnp.array([[c, s], [s, c]])


def imbalanced_transfer(theta, phi):
    """Two-coupler MZI whose couplers are off 50:50 (splitting angles pi/4 + 0.05, - 0.03).

    External phase phi on the upper input, internal phase 2 theta on the upper arm.
    """
    theta, phi = jnp.broadcast_arrays(jnp.asarray(theta), jnp.asarray(phi))
    zero = jnp.zeros_like(theta)

    def phase_screen(angle):
        return jnp.stack(
            [jnp.stack([jnp.exp(1j * angle), zero], -1), jnp.stack([zero, zero + 1], -1)], -2
        )

    first, second = _coupler(jnp.pi / 4 + 0.05), _coupler(jnp.pi / 4 - 0.03)
    inner = jnp.einsum("ij,...jk,kl->...il", second, phase_screen(2 * theta), first)
    return inner @ phase_screen(phi)


MZI_MODELS = {
    "ideal": mzi_transfer,
    "lossy": lossy_transfer,
    "imbalanced": imbalanced_transfer,
}


def phases_np(n, seed, dtype=np.float32):
    """Random complex-mesh phases drawn with NumPy (no PRNG compilation per shape)."""
    rng = np.random.default_rng(seed)
    m = n * (n - 1) // 2
    draw = [rng.uniform(0, np.pi / 2, m), rng.uniform(0, 2 * np.pi, m), rng.uniform(0, 7, n)]
    return ClementsPhases(*(jnp.asarray(a, dtype) for a in draw))


def orthogonal_np(n, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-np.pi, np.pi, n * (n - 1) // 2)
    return OrthogonalPhases(jnp.asarray(theta, dtype), jnp.asarray(rng.choice([-1, 1], n), dtype))


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("n", range(1, 10))
def test_layout_matches_definition_and_count(n):
    column, top = clements_layout(n)
    assert mzi_count(n) == n * (n - 1) // 2 == len(column) == len(top)
    # Independent enumeration: column c holds m = c%2, c%2+2, ... with m+1 < n.
    expected = [(c, m) for c in range(n) for m in range(c % 2, n - 1, 2)]
    assert list(zip(column.tolist(), top.tolist(), strict=True)) == expected
    # Every column's MZIs act on disjoint mode pairs.
    for c in range(n):
        modes = np.concatenate([top[column == c], top[column == c] + 1])
        assert len(set(modes.tolist())) == len(modes)
    assert np.all(np.diff(column) >= 0)


def test_layout_exact_small_cases():
    column, top = clements_layout(5)
    np.testing.assert_array_equal(column, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(top, [0, 2, 1, 3, 0, 2, 1, 3, 0, 2])
    assert clements_layout(1)[0].shape == (0,)
    assert mzi_count(1) == 0
    assert mzi_count(256) == 32640


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_mzi_count_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="number of modes n must be an integer >= 1"):
        mzi_count(bad)


def test_layout_arrays_are_read_only():
    column, _ = clements_layout(4)
    with pytest.raises(ValueError):
        column[0] = 3


# --------------------------------------------------------------------- complex mesh


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_unitary_matches_brute_force_product(n, x64):
    phases = phases_np(n, n, np.float64)
    expected = brute_force_unitary(*(np.asarray(p) for p in phases))
    u = clements_unitary(phases)
    assert u.dtype == jnp.complex128
    chex.assert_trees_all_close(u, expected, atol=1e-12)


def test_two_mode_exact_values():
    # One MZI in the cross state and output phases (0, pi): U = diag(1, -1) [[0, -1], [1, 0]].
    phases = ClementsPhases(jnp.array([jnp.pi / 2]), jnp.array([0.3]), jnp.array([0.0, jnp.pi]))
    expected = jnp.array([[0, -1], [-np.exp(0.3j), 0]])
    chex.assert_trees_all_close(clements_unitary(phases), expected, atol=1e-6)


def test_all_bar_states_give_the_output_phase_screen():
    n = 5
    out = jnp.linspace(0.0, 3.0, n)
    phases = ClementsPhases(jnp.zeros(mzi_count(n)), jnp.zeros(mzi_count(n)), out)
    chex.assert_trees_all_close(clements_unitary(phases), jnp.diag(jnp.exp(1j * out)), atol=1e-6)


@given(n=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_mesh_is_unitary(n, seed):
    rng = np.random.default_rng(seed)
    m = mzi_count(n)
    phases = ClementsPhases(
        rng.uniform(-7, 7, m), rng.uniform(-7, 7, m), rng.uniform(-7, 7, n)
    )  # float64 phases: the same compiled meshes as test_decompose's round trips
    with jax.enable_x64(True):
        u = np.asarray(clements_unitary(phases))
    np.testing.assert_allclose(u.conj().T @ u, np.eye(n), atol=1e-13)


def test_large_mesh_is_unitary(x64):
    n = 64
    u = np.asarray(clements_unitary(phases_np(n, 0, np.float64)))
    np.testing.assert_allclose(u.conj().T @ u, np.eye(n), atol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_apply_equals_matrix_product_on_batches(n, x64):
    phases = phases_np(n, 7, np.float64)
    u = clements_unitary(phases)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((9, n)) + 1j * rng.standard_normal((9, n))
    chex.assert_trees_all_close(apply_clements(phases, x), x @ u.T, atol=1e-12)


def test_apply_accepts_vectors_real_input_and_extra_dims(x64):
    n = 5
    phases = phases_np(n, 8, np.float64)
    u = clements_unitary(phases)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n)
    chex.assert_trees_all_close(apply_clements(phases, x), u @ x, atol=1e-12)
    x = rng.standard_normal((2, 4, n))
    chex.assert_trees_all_close(apply_clements(phases, x), x @ u.T, atol=1e-12)


def test_vmap_over_phase_sets_equals_loop():
    n = 5
    batch = jax.vmap(random_clements_phases, (0, None))(jax.random.split(jax.random.key(1), 4), n)
    chex.assert_shape(batch.theta, (4, mzi_count(n)))
    x = np.random.default_rng(2).standard_normal((4, 3, n)).astype(np.float32)
    stacked_u = jax.vmap(clements_unitary)(batch)
    stacked_y = jax.vmap(apply_clements)(batch, x)
    host = jax.tree.map(np.asarray, batch)
    for i in range(4):
        one = ClementsPhases(*(p[i] for p in host))
        chex.assert_trees_all_close(stacked_u[i], clements_unitary(one), atol=1e-6)
        chex.assert_trees_all_close(stacked_y[i], apply_clements(one, x[i]), atol=1e-6)


def test_gradients_match_finite_differences(x64):
    phases = phases_np(3, 9, np.float64)
    x = jnp.array([1.0, -2.0, 0.5j])
    weights = jnp.array([0.5, 1.0, 2.0])

    def loss(theta, phi, output_phase):
        y = apply_clements(ClementsPhases(theta, phi, output_phase), x)
        return jnp.sum(weights * jnp.abs(y) ** 2 + y.real)

    jax.test_util.check_grads(loss, tuple(phases), order=1, modes=["rev"])


def test_float32_phases_give_complex64():
    phases = random_clements_phases(jax.random.key(0), 5)
    assert phases.theta.dtype == jnp.float32
    assert clements_unitary(phases).dtype == jnp.complex64
    assert apply_clements(phases, jnp.ones((3, 5))).dtype == jnp.complex64


def test_random_phases_ranges():
    p = random_clements_phases(jax.random.key(3), 5)
    assert p.theta.shape == p.phi.shape == (10,) and p.output_phase.shape == (5,)
    assert 0 <= p.theta.min() and p.theta.max() <= jnp.pi / 2
    assert 0 <= p.phi.min() and p.phi.max() < 2 * jnp.pi


# ------------------------------------------------------------ pluggable MZI model


@pytest.mark.parametrize("model", MZI_MODELS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_custom_transfer_matches_brute_force(n, model, x64):
    transfer = MZI_MODELS[model]
    phases = phases_np(n, 20 + n, np.float64)
    expected = brute_force_unitary(*(np.asarray(p) for p in phases), transfer=transfer)
    u = clements_unitary(phases, transfer=transfer)
    assert u.dtype == jnp.complex128
    chex.assert_trees_all_close(u, expected, atol=1e-12)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n + 1, n)) + 1j * rng.standard_normal((n + 1, n))
    # One vector is propagated column by column, a batch of n + 1 goes through the matrix.
    chex.assert_trees_all_close(
        apply_clements(phases, x[0], transfer=transfer), expected @ x[0], atol=1e-12
    )
    chex.assert_trees_all_close(
        apply_clements(phases, x, transfer=transfer), x @ expected.T, atol=1e-12
    )


def test_custom_models_differ_from_the_ideal_mesh(x64):
    phases = phases_np(4, 0, np.float64)
    ideal = np.asarray(clements_unitary(phases))
    lossy = np.asarray(clements_unitary(phases, transfer=lossy_transfer))
    imbalanced = np.asarray(clements_unitary(phases, transfer=imbalanced_transfer))
    # A lossy mesh transmits less than all the light; the imbalanced one stays unitary.
    assert np.linalg.norm(lossy, 2) < 1 - 1e-3
    np.testing.assert_allclose(imbalanced.conj().T @ imbalanced, np.eye(4), atol=1e-12)
    assert np.abs(imbalanced - ideal).max() > 1e-2


def test_default_transfer_is_mzi_transfer():
    phases = phases_np(5, 1)
    chex.assert_trees_all_close(
        clements_unitary(phases, transfer=mzi_transfer), clements_unitary(phases)
    )


def test_custom_transfer_jits_once_and_vmaps():
    n = 5
    fn = clements_unitary
    fn(phases_np(n, 30), transfer=lossy_transfer)
    size = fn._cache_size()
    fn(phases_np(n, 31), transfer=lossy_transfer)
    assert fn._cache_size() == size
    batch = jax.tree.map(lambda *p: jnp.stack(p), phases_np(n, 32), phases_np(n, 33))
    stacked = jax.vmap(functools.partial(clements_unitary, transfer=lossy_transfer))(batch)
    chex.assert_trees_all_close(
        stacked[1], clements_unitary(phases_np(n, 33), transfer=lossy_transfer), atol=1e-6
    )


def mzi_transfer_transposed_batch(theta, phi):
    return jnp.moveaxis(mzi_transfer(theta, phi), 0, -1)


def flat_transfer(theta, phi):
    return mzi_transfer(theta, phi).reshape(-1, 4)


def test_bad_transfer_is_refused():
    phases = phases_np(3, 0)
    with pytest.raises(ValueError, match=r"transfer must be a function"):
        clements_unitary(phases, transfer=3)
    with pytest.raises(
        ValueError, match=r"must return one 2 x 2 matrix per MZI, shape \(3, 2, 2\)"
    ):
        clements_unitary(phases, transfer=mzi_transfer_transposed_batch)
    with pytest.raises(ValueError, match=r"shape \(3, 2, 2\), got \(3, 4\)"):
        apply_clements(phases, jnp.ones(3), transfer=flat_transfer)


# ----------------------------------------------------------------- propagate_columns


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7])
def test_propagate_columns_is_the_mesh_without_its_screen(n, x64):
    phases = phases_np(n, 40 + n, np.float64)
    theta, phi = np.asarray(phases.theta), np.asarray(phases.phi)
    expected = brute_force_unitary(theta, phi, np.zeros(n))
    transfers = mzi_transfer(phases.theta, phases.phi)
    chex.assert_trees_all_close(
        propagate_columns(transfers, jnp.eye(n, dtype=complex)), expected, atol=1e-12
    )
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 2, 3))  # modes first, any trailing shape, real input
    y = propagate_columns(transfers, x)
    assert y.shape == (n, 2, 3) and y.dtype == jnp.complex128
    chex.assert_trees_all_close(y, np.einsum("ij,jab->iab", expected, x), atol=1e-12)
    chex.assert_trees_all_close(propagate_columns(transfers, x[:, 0, 0]), expected @ x[:, 0, 0])


def test_propagate_columns_with_real_transfers_and_complex_light():
    n = 4
    phases = orthogonal_np(n, 0)
    q = orthogonal_matrix(phases._replace(output_sign=jnp.ones(n)))
    transfers = givens_rotation(phases.theta)
    chex.assert_trees_all_close(propagate_columns(transfers, jnp.eye(n)), q, atol=1e-6)
    x = jnp.array([1.0, 1j, -1.0, 0.5], jnp.complex64)
    y = propagate_columns(transfers, x)
    assert y.dtype == jnp.complex64
    chex.assert_trees_all_close(y, q @ x, atol=1e-6)


def test_propagate_columns_validates_shapes():
    with pytest.raises(ValueError, match=r"transfers must have shape \(6, 2, 2\).*got \(5, 2, 2\)"):
        propagate_columns(jnp.zeros((5, 2, 2)), jnp.ones(4))
    with pytest.raises(ValueError, match=r"transfers must have shape \(3, 2, 2\)"):
        propagate_columns(jnp.zeros((3, 4)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \[n, \.\.\.\]"):
        propagate_columns(jnp.zeros((0, 2, 2)), jnp.float32(1.0))


# ------------------------------------------------------------------- orthogonal mesh


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_orthogonal_matches_brute_force(n, x64):
    phases = orthogonal_np(n, n, np.float64)
    column, top = clements_layout(n)
    q = np.eye(n)
    for k in range(len(column)):
        g = np.eye(n)
        g[top[k] : top[k] + 2, top[k] : top[k] + 2] = givens_rotation(phases.theta[k])
        q = g @ q
    q = np.asarray(phases.output_sign)[:, None] * q
    result = orthogonal_matrix(phases)
    assert result.dtype == jnp.float64
    chex.assert_trees_all_close(result, q, atol=1e-12)
    assert np.isclose(np.linalg.det(result), np.prod(np.asarray(phases.output_sign)))


def test_orthogonal_apply_and_vmap():
    n = 5
    batch = jax.vmap(random_orthogonal_phases, (0, None))(jax.random.split(jax.random.key(4), 3), n)
    assert set(np.unique(batch.output_sign).tolist()) <= {-1.0, 1.0}
    qs = np.asarray(jax.vmap(orthogonal_matrix)(batch))
    np.testing.assert_allclose(
        np.einsum("bji,bjk->bik", qs, qs), np.broadcast_to(np.eye(n), (3, n, n)), atol=1e-5
    )
    x = np.random.default_rng(5).standard_normal((3, 10, n)).astype(np.float32)
    y = jax.vmap(apply_orthogonal)(batch, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, np.einsum("bij,bkj->bki", qs, x), atol=1e-5)
    host = jax.tree.map(np.asarray, batch)
    for i in range(3):
        one = OrthogonalPhases(*(p[i] for p in host))
        np.testing.assert_allclose(qs[i], orthogonal_matrix(one), atol=1e-6)


def test_orthogonal_equals_complex_mesh_at_zero_phi():
    n = 5
    phases = orthogonal_np(n, 6)
    as_complex = ClementsPhases(
        phases.theta,
        jnp.zeros_like(phases.theta),
        jnp.where(phases.output_sign > 0, 0.0, jnp.pi),
    )
    chex.assert_trees_all_close(
        orthogonal_matrix(phases).astype(jnp.complex64), clements_unitary(as_complex), atol=1e-6
    )


# --------------------------------------------------------------------- input checks


def test_wrong_theta_length_names_expected_shape():
    phases = ClementsPhases(jnp.zeros(5), jnp.zeros(5), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"theta has shape \(5,\).*n=4.*\(6,\)"):
        clements_unitary(phases)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        orthogonal_matrix(OrthogonalPhases(jnp.zeros(5), jnp.ones(4)))


def test_other_shape_errors():
    good = phases_np(4, 0)
    with pytest.raises(ValueError, match="phi has shape"):
        clements_unitary(good._replace(phi=jnp.zeros(5)))
    with pytest.raises(ValueError, match="vmap"):
        clements_unitary(jax.tree.map(lambda p: jnp.stack([p, p]), good))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\]"):
        apply_clements(good, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="must be real"):
        clements_unitary(good._replace(theta=good.theta + 0j))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        apply_orthogonal(orthogonal_np(3, 0), jnp.ones(4))


def test_no_recompilation_on_second_call():
    n = 5
    p1, p2 = phases_np(n, 10), phases_np(n, 11)
    x1, x2 = jnp.ones((3, n)), jnp.zeros((3, n))
    for fn, args1, args2 in [
        (clements_unitary, (p1,), (p2,)),
        (apply_clements, (p1, x1), (p2, x2)),
    ]:
        fn(*args1)
        size = fn._cache_size()
        fn(*args2)
        assert fn._cache_size() == size


@pytest.mark.parametrize("batch", [1, 3, 7, 8, 16])
def test_propagation_and_matrix_paths_agree(batch, x64):
    """Batches below n propagate column by column, larger ones use the built matrix."""
    n = 8
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, n)) + 1j * rng.standard_normal((batch, n))
    phases = phases_np(n, 3, np.float64)
    expected = x @ np.asarray(clements_unitary(phases)).T
    chex.assert_trees_all_close(apply_clements(phases, x), expected, atol=1e-12)
    real = orthogonal_np(n, 4, np.float64)
    expected = x.real @ np.asarray(orthogonal_matrix(real)).T
    chex.assert_trees_all_close(apply_orthogonal(real, x.real), expected, atol=1e-12)
