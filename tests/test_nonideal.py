import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optinc_jax
from optinc_jax import (
    NOISE_MODELS,
    chain_perturbations,
    dac_quantization,
    insertion_loss,
    phase_error,
    receiver_noise,
    splitter_error,
    thermal_crosstalk,
)
from optinc_jax.photonics.circuit import (
    AttenuatorColumn,
    Circuit,
    CircuitInfo,
    MeshSettings,
    SVDStage,
    calibrate_gains,
    circuit_forward,
    circuit_matrices,
    compile_circuit,
    coupler_error_matrix,
    mesh_matrix,
)

KEY = jax.random.key(7)
CHIP_MODELS = [name for name, model in NOISE_MODELS.items() if model.perturb is not None]


def ideal_mesh(n, theta=None, phi=None, screen=None):
    m = n * (n - 1) // 2
    return MeshSettings(
        theta=np.zeros(m) if theta is None else np.asarray(theta, float),
        phi=np.zeros(m) if phi is None else np.asarray(phi, float),
        output_phase=np.zeros(n) if screen is None else np.asarray(screen, float),
        coupler_error=np.zeros((m, 2)),
        loss_db=np.zeros(m),
    )


def one_stage_circuit(input_mesh, attenuator_theta=None, attenuator_phi=None):
    """A single n x n SVD stage: the given input mesh, attenuators, identity output mesh."""
    n = input_mesh.output_phase.shape[0]
    attenuators = AttenuatorColumn(
        theta=np.zeros(n) if attenuator_theta is None else np.asarray(attenuator_theta, float),
        phi=np.zeros(n) if attenuator_phi is None else np.asarray(attenuator_phi, float),
        coupler_error=np.zeros((n, 2)),
        loss_db=np.zeros(n),
    )
    stage = SVDStage(input_mesh, attenuators, ideal_mesh(n), np.float64(1.0), np.zeros(n))
    info = CircuitInfo(4, 2, n, (), ((n, n),), ((),))
    one, zero = np.float64(1.0), np.float64(0.0)
    return Circuit((stage,), zero, one, one, zero, (np.eye(n),), info)


def hand_mzi(theta, phi):
    """The convention written out by hand (SPEC section 1)."""
    e = np.exp(1j * phi)
    return np.array([[e * np.cos(theta), -np.sin(theta)], [e * np.sin(theta), np.cos(theta)]])


def small_network(seed=0):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(3, 2))
    w1 = rng.normal(size=(2, 3))
    return compile_circuit(
        {
            "weights_0": w0.astype(np.float32),
            "biases_0": rng.normal(size=3).astype(np.float32),
            "weights_1": w1.astype(np.float32),
            "biases_1": rng.normal(size=2).astype(np.float32),
            "input_shift": 0.5,
            "input_scale": 1.0,
            "output_scale": 1.0,
            "output_shift": 1.5,
            "bits": np.int64(4),
            "servers": np.int64(2),
            "inputs": np.int64(2),
        }
    )


# ------------------------------------------------------------------- zero strength


@pytest.mark.parametrize("name", CHIP_MODELS)
def test_zero_strength_is_the_ideal_circuit_exactly(name):
    circuit = small_network()
    x = np.random.default_rng(1).uniform(0, 3, size=(16, 2)).astype(np.float32)
    ideal = circuit_forward(circuit, x)
    model = NOISE_MODELS[name]
    assert model.perturb(circuit, KEY, 0) is circuit
    # A traced zero (as in the vmapped sweep) computes the same numbers bit for bit.
    traced = jax.jit(lambda s: circuit_forward(model.perturb(circuit, KEY, s), x))
    np.testing.assert_array_equal(traced(jnp.float32(0.0)), ideal)


def test_zero_receiver_noise_is_exact():
    y = jnp.array([[0.2, 2.9]])
    np.testing.assert_array_equal(receiver_noise(y, KEY, 0.0), y)
    np.testing.assert_array_equal(jax.jit(receiver_noise)(y, KEY, 0.0), y)


@pytest.mark.parametrize(
    ("model", "value"),
    [
        (phase_error, -0.1),
        (dac_quantization, 2.5),
        (dac_quantization, -1),
        (insertion_loss, float("nan")),
        (splitter_error, float("inf")),
        (thermal_crosstalk, -1e-3),
    ],
)
def test_bad_strengths_are_refused(model, value):
    with pytest.raises(ValueError, match="must be"):
        model(small_network(), KEY, value)


# ------------------------------------------------------------------- hand-computed 2x2 / 3x3


def test_phase_error_adds_std_times_one_normal_draw():
    mesh = ideal_mesh(2, theta=[0.4], phi=[0.0], screen=[0.0, np.pi])
    circuit = one_stage_circuit(mesh)
    small = phase_error(circuit, KEY, 0.01).stages[0]
    large = phase_error(circuit, KEY, 0.03).stages[0]
    for field in ("theta", "phi", "output_phase"):
        delta_small = np.asarray(getattr(small.input_mesh, field)) - getattr(mesh, field)
        delta_large = np.asarray(getattr(large.input_mesh, field)) - getattr(mesh, field)
        np.testing.assert_allclose(delta_large, 3 * delta_small, rtol=1e-4, atol=1e-7)
        assert np.all(delta_small != 0)
    # The stage is the hand-written MZI with the perturbed phases.
    theta = float(small.input_mesh.theta[0])
    phi = float(small.input_mesh.phi[0])
    screen = np.exp(1j * np.asarray(small.input_mesh.output_phase, float))
    u_in = screen[:, None] * hand_mzi(theta, phi)
    att = np.cos(np.asarray(small.attenuators.theta, float)) * np.exp(
        1j * np.asarray(small.attenuators.phi, float)
    )
    out = small.output_mesh
    u_out = np.exp(1j * np.asarray(out.output_phase, float))[:, None] * hand_mzi(
        float(out.theta[0]), float(out.phi[0])
    )
    expected = (u_out * att[None, :]) @ u_in
    got = circuit_matrices(phase_error(circuit, KEY, 0.01))[0]
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_phase_errors_have_the_requested_spread():
    circuit = compile_circuit(
        {
            "weights_0": np.random.default_rng(0).normal(size=(64, 64)),
            "biases_0": np.zeros(64),
            "input_shift": 0.0,
            "input_scale": 1.0,
            "output_scale": 1.0,
            "output_shift": 0.0,
            "bits": np.int64(4),
            "servers": np.int64(2),
            "inputs": np.int64(64),
        }
    )
    noisy = phase_error(circuit, KEY, 0.02)
    deltas = np.concatenate(
        [
            np.ravel(np.asarray(new) - old)
            for new, old in zip(
                jax.tree.leaves(noisy.stages[0].input_mesh[:3]),
                jax.tree.leaves(circuit.stages[0].input_mesh[:3]),
                strict=True,
            )
        ]
    )
    assert deltas.size == 2 * 2016 + 64
    assert abs(deltas.std() - 0.02) < 0.001 and abs(deltas.mean()) < 0.001


def test_dac_quantization_by_hand():
    mesh = ideal_mesh(2, theta=[1.0], phi=[0.3], screen=[np.pi, 0.1])
    circuit = one_stage_circuit(mesh, attenuator_theta=[0.2, 0.9])
    two_bits = dac_quantization(circuit, None, 2)  # step pi / 2
    stage = two_bits.stages[0]
    np.testing.assert_allclose(stage.input_mesh.theta, [np.pi / 2], atol=1e-6)
    np.testing.assert_allclose(stage.input_mesh.phi, [0.0], atol=1e-7)
    np.testing.assert_allclose(stage.input_mesh.output_phase, [np.pi, 0.0], atol=1e-6)
    np.testing.assert_allclose(stage.attenuators.theta, [0.0, np.pi / 2], atol=1e-6)
    # diag(-1, 1) @ R(pi/2), then attenuators (1, cos(pi/2) = 0): [[0, 1], [0, 0]].
    np.testing.assert_allclose(
        circuit_matrices(two_bits)[0].real, [[0.0, 1.0], [0.0, 0.0]], atol=1e-6
    )
    three_bits = dac_quantization(circuit, None, 3).stages[0]  # step pi / 4
    np.testing.assert_allclose(three_bits.input_mesh.theta, [np.pi / 4], atol=1e-6)
    np.testing.assert_allclose(three_bits.attenuators.theta, [0.0, np.pi / 4], atol=1e-6)


def test_insertion_loss_accumulates_along_each_path():
    # 3 modes, every MZI in the bar state: mode 0 meets the MZIs of columns 0 and 2, mode 1
    # those of columns 0, 1 and 2, mode 2 that of column 1. The stage is input mesh,
    # attenuator, output mesh: 2 + 1 + 2, 3 + 1 + 3 and 1 + 1 + 1 MZIs.
    circuit = insertion_loss(one_stage_circuit(ideal_mesh(3)), None, 1.0)
    expected = np.diag(10.0 ** (-np.array([5, 7, 3]) / 20))
    np.testing.assert_allclose(circuit_matrices(circuit)[0], expected, rtol=1e-5, atol=1e-7)
    mesh = insertion_loss(circuit, None, 0.5).stages[0].input_mesh  # 1.5 dB per MZI now
    np.testing.assert_allclose(
        mesh_matrix(mesh), np.diag(10.0 ** (-np.array([3.0, 4.5, 1.5]) / 20)), rtol=1e-5
    )


def test_calibration_undoes_a_uniform_loss():
    ideal = one_stage_circuit(ideal_mesh(2, theta=[0.3]))
    ideal = ideal._replace(digital_weights=(hand_mzi(0.3, 0.0).real,))
    circuit = insertion_loss(ideal, None, 0.7)
    # Every path of a 2-mode stage crosses 3 MZIs: the loss is uniform, a gain undoes it.
    np.testing.assert_allclose(
        circuit_matrices(calibrate_gains(circuit))[0].real,
        hand_mzi(0.3, 0.0).real,
        atol=2e-6,
    )


@pytest.mark.parametrize(("alpha1", "alpha2"), [(0.1, 0.2), (-0.05, 0.15), (0.0, 0.3)])
def test_coupler_errors_by_hand(alpha1, alpha2):
    errors = jnp.array([alpha1, alpha2])
    cross = coupler_error_matrix(jnp.pi / 2, errors) @ optinc_jax.mzi_transfer(jnp.pi / 2, 0.0)
    bar = coupler_error_matrix(0.0, errors) @ optinc_jax.mzi_transfer(0.0, 0.0)
    # Cross state: leak |sin(a1 + a2)| into the bar port; bar state: |sin(a1 - a2)|.
    np.testing.assert_allclose(abs(cross[0, 0]), abs(np.sin(alpha1 + alpha2)), atol=1e-6)
    np.testing.assert_allclose(abs(cross[1, 0]), np.cos(alpha1 + alpha2), atol=1e-6)
    np.testing.assert_allclose(abs(bar[1, 0]), abs(np.sin(alpha1 - alpha2)), atol=1e-6)
    np.testing.assert_allclose(abs(bar[0, 0]), np.cos(alpha1 - alpha2), atol=1e-6)


def test_coupler_error_matrix_is_the_physical_two_coupler_mzi():
    rng = np.random.default_rng(3)
    for theta, phi, a1, a2 in rng.uniform(-1, 1, size=(10, 4)):

        def coupler(chi):
            return np.array([[np.cos(chi), 1j * np.sin(chi)], [1j * np.sin(chi), np.cos(chi)]])

        delta = np.pi - 2 * theta
        physical = (
            -1j
            * np.exp(-1j * delta / 2)
            * coupler(np.pi / 4 + a2)
            @ np.diag([np.exp(1j * delta), 1])
            @ coupler(np.pi / 4 + a1)
            @ np.diag([1, -1])
            @ np.diag([np.exp(1j * phi), 1])
        )
        error = coupler_error_matrix(jnp.float32(theta), jnp.array([a1, a2], jnp.float32))
        got = error @ optinc_jax.mzi_transfer(jnp.float32(theta), jnp.float32(phi))
        np.testing.assert_allclose(got, physical, atol=2e-6)
    identity = coupler_error_matrix(jnp.array([0.3, 1.2]), jnp.zeros((2, 2)))
    np.testing.assert_array_equal(identity, np.broadcast_to(np.eye(2), (2, 2, 2)))


def test_splitter_error_on_a_cross_mzi():
    circuit = one_stage_circuit(ideal_mesh(2, theta=[np.pi / 2]))
    noisy = splitter_error(circuit, KEY, 0.05)
    mesh = noisy.stages[0].input_mesh
    a1, a2 = np.asarray(mesh.coupler_error[0], float)
    assert a1 != 0 and a2 != 0
    u = mesh_matrix(mesh)
    np.testing.assert_allclose(abs(u[0, 0]), abs(np.sin(a1 + a2)), atol=1e-6)
    twice = splitter_error(circuit, KEY, 0.1).stages[0].input_mesh.coupler_error
    np.testing.assert_allclose(twice, 2 * np.asarray(mesh.coupler_error), rtol=1e-5)


def test_thermal_crosstalk_by_hand():
    # 4 modes: MZIs in layout order sit in columns [0, 0, 1, 2, 2, 3]; neighbours on the
    # chip are (0, 1) and (3, 4). Heater drives are the phases taken in [0, 2 pi).
    theta = [0.1, -0.2, 0.3, 0.4, 0.5, 0.6]
    mesh = ideal_mesh(4, theta=theta, screen=[0.0, np.pi, 0.0, 0.0])
    circuit = one_stage_circuit(mesh, attenuator_theta=[0.0, 1.0, 0.0, 0.5])
    stage = thermal_crosstalk(circuit, None, 0.1).stages[0]
    k, two_pi = 0.1, 2 * np.pi
    expected = [
        0.1 + k * (two_pi - 0.2),
        -0.2 + k * 0.1,
        0.3,
        0.4 + k * 0.5,
        0.5 + k * 0.4,
        0.6,
    ]
    np.testing.assert_allclose(stage.input_mesh.theta, expected, rtol=1e-6)
    np.testing.assert_allclose(stage.input_mesh.phi, np.zeros(6))
    np.testing.assert_allclose(
        stage.input_mesh.output_phase, [k * np.pi, np.pi, k * np.pi, 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(stage.attenuators.theta, [0.1, 1.0, 0.15, 0.5], rtol=1e-6)


def test_receiver_noise_is_gaussian_in_symbol_units():
    y = jnp.zeros((200_000, 1))
    noise = np.asarray(receiver_noise(y, KEY, 0.25))
    assert abs(noise.std() - 0.25) < 0.003 and abs(noise.mean()) < 0.003
    doubled = np.asarray(receiver_noise(y, KEY, 0.5))
    np.testing.assert_allclose(doubled, 2 * noise, rtol=1e-6)
    # A symbol at level 1 decodes wrong where |noise| > 0.5: P = 2 Phi(-2) = 4.55 %.
    wrong = np.mean(optinc_jax.receiver(1.0 + noise) != 1)
    assert abs(wrong - 0.0455) < 0.002


# ------------------------------------------------------------------- loss removes power


@given(
    n=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    loss_scale=st.floats(0.0, 3.0),
    error_scale=st.floats(0.0, 0.5),
)
def test_loss_only_removes_power(n, seed, loss_scale, error_scale):
    rng = np.random.default_rng(seed)
    m = n * (n - 1) // 2
    mesh = MeshSettings(
        theta=rng.uniform(-np.pi, np.pi, m),
        phi=rng.uniform(0, 2 * np.pi, m),
        output_phase=rng.uniform(0, 2 * np.pi, n),
        coupler_error=error_scale * rng.normal(size=(m, 2)),
        loss_db=np.zeros(m),
    )
    x = rng.normal(size=(n, 8)) + 1j * rng.normal(size=(n, 8))
    lossless = np.asarray(mesh_matrix(mesh), np.complex128) @ x
    lossy_mesh = mesh._replace(loss_db=loss_scale * rng.uniform(size=m))
    lossy = np.asarray(mesh_matrix(lossy_mesh), np.complex128) @ x
    power_in = np.sum(abs(x) ** 2, axis=0)
    # Couplers with errors stay lossless; insertion loss only removes power.
    np.testing.assert_allclose(np.sum(abs(lossless) ** 2, axis=0), power_in, rtol=1e-5)
    assert np.all(np.sum(abs(lossy) ** 2, axis=0) <= power_in * (1 + 1e-5))
    # Never below the loss of the longest path (n MZIs).
    floor = 10 ** (-loss_scale * n / 10)
    assert np.all(np.sum(abs(lossy) ** 2, axis=0) >= power_in * floor * (1 - 1e-5))


@given(seed=st.integers(0, 2**31 - 1), loss_db=st.floats(0.0, 2.0))
def test_lossy_stage_optics_never_amplify(seed, loss_db):
    circuit = insertion_loss(small_network(seed % 4), None, loss_db)
    for stage, matrix in zip(circuit.stages, circuit_matrices(circuit), strict=True):
        optics = np.asarray(matrix) / float(stage.gain)
        assert np.linalg.norm(optics, 2) <= 1 + 1e-5


# ------------------------------------------------------------------- composition


def test_models_compose_and_chaining_is_function_composition():
    circuit = small_network()
    steps = [
        functools.partial(dac_quantization, bits=8),
        functools.partial(thermal_crosstalk, coupling=0.01),
        functools.partial(phase_error, std_rad=0.01),
        functools.partial(splitter_error, std_rad=0.02),
        functools.partial(insertion_loss, loss_db=0.1),
    ]
    chained = chain_perturbations(*steps)(circuit, KEY)
    by_hand = circuit
    for index, step in enumerate(steps):
        by_hand = step(by_hand, jax.random.fold_in(KEY, index))
    for a, b in zip(jax.tree.leaves(chained), jax.tree.leaves(by_hand), strict=True):
        np.testing.assert_array_equal(a, b)
    # Models on different fields commute.
    ab = insertion_loss(splitter_error(circuit, KEY, 0.02), None, 0.1)
    ba = splitter_error(insertion_loss(circuit, None, 0.1), KEY, 0.02)
    for a, b in zip(jax.tree.leaves(ab), jax.tree.leaves(ba), strict=True):
        np.testing.assert_array_equal(a, b)


def test_models_vmap_over_keys():
    circuit = small_network()
    keys = jax.random.split(KEY, 5)
    stacked = jax.vmap(lambda k: phase_error(circuit, k, 0.01))(keys)
    assert stacked.stages[0].input_mesh.theta.shape == (5, 1)
    for index in range(5):
        one = phase_error(circuit, keys[index], 0.01)
        np.testing.assert_allclose(
            stacked.stages[1].output_mesh.output_phase[index],
            one.stages[1].output_mesh.output_phase,
            rtol=1e-6,
        )
