import itertools
import zipfile

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optinc_jax
from optinc_jax import insertion_loss, splitter_error
from optinc_jax.photonics.circuit import (
    FORMAT_VERSION,
    BlockStage,
    SVDStage,
    circuit_forward,
    circuit_matrices,
    circuit_mzis,
    compile_circuit,
    digital_forward,
    load_circuit,
    save_circuit,
)


def network_arrays(layers, approx=(), side="left", seed=0):
    """An export dict of a random network; approximated matrices projected exactly."""
    rng = np.random.default_rng(seed)
    arrays = {
        "input_shift": 1.5,
        "input_scale": 0.7,
        "output_scale": 1.3,
        "output_shift": 1.5,
        "bits": np.int64(2 * layers[-1]),
        "servers": np.int64(2),
        "inputs": np.int64(layers[0]),
        "approx_layers": np.asarray(approx, np.int64),
    }
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        weight = (rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in)).astype(np.float32)
        if index + 1 in approx:
            weight = np.asarray(optinc_jax.approx_diag_unitary(weight, side=side))
        arrays[f"weights_{index}"] = weight
        arrays[f"biases_{index}"] = (0.1 * rng.normal(size=fan_out)).astype(np.float32)
    return arrays


def inputs_for(arrays, count=64, seed=1):
    return np.random.default_rng(seed).uniform(0, 3, size=(count, int(arrays["inputs"])))


MIXED = network_arrays((3, 5, 2, 4, 4), approx=(1, 2, 4))  # tall padded, wide, square


@pytest.fixture(scope="module")
def mixed():
    return compile_circuit(MIXED)


# ------------------------------------------------------------------- compile and simulate


def test_two_by_two_by_hand():
    weight = np.array([[1.0, 2.0], [0.5, -1.0]])
    arrays = {
        "weights_0": weight,
        "biases_0": np.array([0.25, -0.5]),
        "input_shift": 1.0,
        "input_scale": 2.0,
        "output_scale": 0.5,
        "output_shift": 1.5,
        "bits": np.int64(4),
        "servers": np.int64(2),
        "inputs": np.int64(2),
    }
    circuit = compile_circuit(arrays)
    (stage,) = circuit.stages
    singular = np.linalg.svd(weight, compute_uv=False)
    assert isinstance(stage, SVDStage)
    np.testing.assert_allclose(stage.gain, singular[0], rtol=1e-12)
    # attenuators: cos(theta) = s_i / s_max, phi = 0
    np.testing.assert_allclose(np.cos(stage.attenuators.theta), singular / singular[0])
    np.testing.assert_array_equal(stage.attenuators.phi, [0.0, 0.0])
    np.testing.assert_array_equal(stage.input_mesh.phi, [0.0])
    assert set(np.ravel(stage.output_mesh.output_phase)) <= {0.0, np.pi}
    # y = (W ((x - 1) * 2) + b) * 0.5 + 1.5 at x = (2, 1): W (2, 0) = (2, 1)
    y = circuit_forward(circuit, np.array([[2.0, 1.0]]))
    np.testing.assert_allclose(y, [[(2 + 0.25) * 0.5 + 1.5, (1 - 0.5) * 0.5 + 1.5]], atol=1e-5)
    assert circuit_mzis(circuit) == (1 + 1 + 2,)


def test_three_by_three_block_by_hand():
    # diag(2, 1, 3) times a signed permutation: exactly of diag x orthogonal form.
    weight = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [3.0, 0.0, 0.0]])
    arrays = {
        "weights_0": weight,
        "biases_0": np.zeros(3),
        "input_shift": 0.0,
        "input_scale": 1.0,
        "output_scale": 1.0,
        "output_shift": 0.0,
        "bits": np.int64(6),
        "servers": np.int64(2),
        "inputs": np.int64(3),
        "approx_layers": np.array([1]),
    }
    circuit = compile_circuit(arrays)
    (stage,) = circuit.stages
    assert isinstance(stage, BlockStage) and circuit.info.diag_left == ((True,),)
    assert float(stage.gain) == pytest.approx(3.0, abs=1e-12)
    np.testing.assert_allclose(np.cos(stage.attenuators.theta), [[2 / 3, 1 / 3, 1.0]], atol=1e-12)
    np.testing.assert_allclose(circuit_matrices(circuit)[0], weight, atol=1e-6)
    assert circuit_mzis(circuit) == (3 + 3,)


@pytest.mark.parametrize("side", ["left", "right"])
def test_ideal_circuit_equals_the_digital_network(mixed, side):
    arrays = MIXED if side == "left" else network_arrays((3, 5, 2, 4, 4), (1, 2, 4), "right")
    circuit = mixed if side == "left" else compile_circuit(arrays)
    x = inputs_for(arrays)
    reference = optinc_jax.mlp_forward_numpy(arrays, x)
    np.testing.assert_allclose(circuit_forward(circuit, x), reference, atol=2e-5)
    np.testing.assert_allclose(digital_forward(circuit, x), reference, atol=2e-5)
    for built, weight in zip(circuit_matrices(circuit), circuit.digital_weights, strict=True):
        np.testing.assert_allclose(built.real, weight, atol=2e-6)
        np.testing.assert_allclose(built.imag, 0.0, atol=2e-6)
    kinds = [type(stage).__name__ for stage in circuit.stages]
    assert kinds == ["BlockStage", "BlockStage", "SVDStage", "BlockStage"]
    # The side of the diagonal was found without being told (the export lacks it);
    # a padded last block carries it on its padded side: outputs of the tall 5 x 3
    # matrix, inputs of the wide 2 x 5 one.
    left = side == "left"
    assert circuit.info.diag_left[:2] == ((left, True), (left, left, False))


@settings(max_examples=6)
@given(
    widths=st.lists(st.sampled_from([1, 2, 3]), min_size=2, max_size=4),
    approx_mask=st.integers(0, 7),
    seed=st.integers(0, 1000),
)
def test_random_networks_deploy_exactly(widths, approx_mask, seed):
    approx = tuple(i + 1 for i in range(len(widths) - 1) if approx_mask >> i & 1)
    arrays = network_arrays(tuple(widths), approx, seed=seed)
    circuit = compile_circuit(arrays)
    x = inputs_for(arrays, 16, seed)
    np.testing.assert_allclose(
        circuit_forward(circuit, x), optinc_jax.mlp_forward_numpy(arrays, x), atol=3e-5
    )


def test_mzi_count_by_matrix_is_the_area_model():
    layers, approx = (4, 16, 32, 8, 4), (2, 3)
    circuit = compile_circuit(network_arrays(layers, approx))
    expected = [
        (optinc_jax.approx_matrix_mzis if index in approx else optinc_jax.matrix_mzis)(m, n)
        for index, (n, m) in enumerate(itertools.pairwise(layers), start=1)
    ]
    assert list(circuit_mzis(circuit)) == expected
    assert sum(expected) == optinc_jax.onn_area(layers, approx).mzis


def test_unbatched_input_and_second_call_does_not_recompile(mixed):
    x = inputs_for(MIXED, 8)
    first = circuit_forward(mixed, x)
    size = circuit_forward._cache_size()
    again = circuit_forward(mixed, x + 0.5)
    assert circuit_forward._cache_size() == size and again.shape == first.shape
    np.testing.assert_allclose(circuit_forward(mixed, x[0]), first[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 3\]"):
        circuit_forward(mixed, np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(weights_1=np.full((2, 5), np.nan, np.float32)), "must be finite"),
        (lambda a: a.update(approx_layers=np.array([5])), "approx_layers must be distinct"),
        (lambda a: a.update(approx_layers=np.array([3])), "not of diagonal x orthogonal"),
        (lambda a: a.pop("biases_2"), "lack 'biases_2'"),
        (lambda a: a.pop("input_scale"), "lack 'input_scale'"),
        (lambda a: a.update(weights_2=np.ones((4, 3), np.float32)), "takes 3 inputs"),
        (lambda a: a.update(inputs=np.int64(2)), "inputs is 2"),
    ],
)
def test_bad_exports_are_refused(change, message):
    arrays = dict(MIXED)
    change(arrays)
    with pytest.raises(ValueError, match=message):
        compile_circuit(arrays)


# ------------------------------------------------------------------- the file


def assert_same_circuit(a, b):
    assert a.info == b.info
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_file_round_trip(mixed, tmp_path):
    path = save_circuit(tmp_path / "circuit", mixed)
    assert path == tmp_path / "circuit.npz" and not list(tmp_path.glob(".*tmp*"))
    loaded = load_circuit(path)
    assert_same_circuit(mixed, loaded)
    x = inputs_for(MIXED)
    np.testing.assert_array_equal(circuit_forward(loaded, x), circuit_forward(mixed, x))
    with np.load(path) as data:
        assert int(data["format_version"]) == FORMAT_VERSION
        assert str(data["stage0.kind"]) == "blocks" and str(data["stage2.kind"]) == "svd"
        assert data["stage2.input_mesh.theta"].shape == (1,)
        assert data["stage0.meshes.coupler_error"].shape == (2, 3, 2)


def test_a_perturbed_chip_round_trips_with_its_imperfections(mixed, tmp_path):
    key = jax.random.key(0)
    chip = insertion_loss(splitter_error(mixed, key, 0.02), None, 0.1)
    loaded = load_circuit(save_circuit(tmp_path / "chip.npz", chip))
    assert loaded.info == chip.info
    for x, y in zip(jax.tree.leaves(chip), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float64), y)
    assert np.all(loaded.stages[0].meshes.loss_db == np.float32(0.1))
    assert np.all(loaded.stages[2].attenuators.coupler_error != 0)


def rewrite(path, change):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(format_version=np.int64(2)), "format version 2; .* reads version 1"),
        (lambda a: a.pop("format_version"), "not an optinc circuit file"),
        (lambda a: a.pop("stage1.attenuators.phi"), "missing 'stage1.attenuators.phi'"),
        (
            lambda a: a.update({"stage2.input_mesh.theta": np.zeros(3)}),
            r"'stage2.input_mesh.theta' has shape \(3,\), expected \(1,\)",
        ),
        (
            lambda a: a.update({"stage0.meshes.theta": np.full((2, 3), np.nan)}),
            "'stage0.meshes.theta' holds NaN",
        ),
        (lambda a: a.update({"stage3.gain": np.float64(np.inf)}), "'stage3.gain' holds NaN"),
        (lambda a: a.update({"stage1.kind": np.asarray("mesh")}), "kind must be 'svd' or"),
        (lambda a: a.update({"stage1.kind": np.asarray("svd")}), "in approx_layers but of kind"),
        (lambda a: a.update(extra=np.zeros(1)), r"unexpected arrays \['extra'\]"),
        (lambda a: a.update(stages=np.int64(5)), "missing 'stage4.kind'"),
        (lambda a: a.update(bits=np.float64(8)), "'bits' has dtype float64, expected int"),
    ],
)
def test_bad_circuit_files_are_refused(mixed, tmp_path, change, message):
    path = save_circuit(tmp_path / "circuit.npz", mixed)
    rewrite(path, change)
    with pytest.raises(ValueError, match=message) as error:
        load_circuit(path)
    assert "\n" not in str(error.value)


def test_truncated_corrupt_and_foreign_files_are_refused(mixed, tmp_path):
    path = save_circuit(tmp_path / "circuit.npz", mixed)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(data[:100] + bytes(len(data) - 200) + data[-100:])
    text = tmp_path / "text.npz"
    text.write_text("not a circuit")
    export = tmp_path / "weights.npz"
    np.savez(export, **MIXED)
    for bad, message in [
        (truncated, "not a readable .npz"),
        (corrupt, "not a readable .npz"),
        (text, "not a readable .npz"),
        (export, "not an optinc circuit file"),
        (tmp_path / "missing.npz", "does not exist"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            load_circuit(bad)
        assert "\n" not in str(error.value)
    assert zipfile.is_zipfile(path)


def test_save_needs_the_directory_and_keeps_the_old_file(mixed, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        save_circuit(tmp_path / "no" / "circuit.npz", mixed)
    path = save_circuit(tmp_path / "circuit.npz", mixed)
    before = path.read_bytes()
    stage = mixed.stages[2]
    broken = mixed._replace(
        stages=(*mixed.stages[:2], stage._replace(gain=np.float64(np.nan)), mixed.stages[3])
    )
    with pytest.raises(ValueError, match=r"stage2\.gain must be finite"):
        save_circuit(path, broken)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "circuit.npz"
    ]
