"""The last-layer refit: exact on a case with a known answer, never worse, wired into runs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optinc_jax import (
    ONN,
    TrainConfig,
    encode_pam4,
    evaluate_exhaustive,
    layer_leaf,
    load_run,
    make_dataset_spec,
    onn_apply_fn,
    onn_weights,
    receiver,
    refit_last_layer,
    train_onn,
    with_last_layer,
)
from optinc_jax.encoding.dataset import Samples


@dataclasses.dataclass(frozen=True)
class TwoDigitDataset:
    """Inputs ``(a, b)`` for ``a, b`` in ``0..3``; target ``a + 4 b`` (symbols ``a``, ``b``)."""

    @property
    def size(self) -> int:
        return 16

    @property
    def bits(self) -> int:
        return 4

    def samples(self, indices):
        a, b = indices % 4, indices // 4
        target = (a + 4 * b).astype(jnp.int32)
        inputs = jnp.stack([a, b], axis=-1).astype(jnp.float32)
        return Samples(inputs, target, encode_pam4(target, bits=4))


def _identity_features_onn(kernel, bias):
    """An ONN (2, 2, 2) whose hidden layer passes ``(a, b)`` through and whose last layer
    is the one given: the exact last layer is the identity."""
    apply_fn, params = onn_apply_fn(ONN((2, 2, 2), rngs=nnx.Rngs(0)))
    values = {(0, "kernel"): np.eye(2), (0, "bias"): np.zeros(2)}
    values |= {(1, "kernel"): np.asarray(kernel), (1, "bias"): np.asarray(bias)}
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(values[layer_leaf(path)], leaf.dtype), params
    )
    return apply_fn, params


def _wrong_symbols(apply_fn, params, dataset):
    samples = dataset.samples(jnp.arange(dataset.size))
    decided = np.asarray(receiver(apply_fn(params, samples.inputs)))
    return (decided != np.asarray(samples.target_symbols)).sum(axis=0)


def test_refit_finds_the_exact_last_layer_from_a_wrong_one():
    dataset = TwoDigitDataset()
    apply_fn, params = _identity_features_onn([[0.71, 0.33], [0.19, 1.27]], [0.41, -0.63])
    before = _wrong_symbols(apply_fn, params, dataset)
    assert before.min() >= 3  # both symbols start wrong on several inputs
    refit = refit_last_layer(apply_fn, params, dataset, tolerance=0.2, iterations=20)
    assert refit.wrong_before == tuple(before) and refit.wrong_after == (0, 0)
    assert max(refit.loss_after) < 1e-6 < min(refit.loss_before)
    assert evaluate_exhaustive(apply_fn, refit.params, dataset).accuracy == 1.0
    # The hidden layer is untouched, bit for bit; the outputs sit on their levels.
    (w0, b0), _ = onn_weights(params)
    (w1, b1), (kernel, _) = onn_weights(refit.params)
    np.testing.assert_array_equal(w1, w0)
    np.testing.assert_array_equal(b1, b0)
    samples = dataset.samples(jnp.arange(dataset.size))
    outputs = np.asarray(apply_fn(refit.params, samples.inputs))
    assert np.abs(outputs - np.asarray(samples.target_symbols)).max() < 0.2 + 1e-4
    np.testing.assert_array_equal(refit.kernel, kernel.T)


def test_refit_never_leaves_a_symbol_worse_and_its_counts_are_the_receivers():
    # A small random network on the 8b4s grid: far from right, many borderline outputs.
    dataset = make_dataset_spec(8, 4, 4)
    apply_fn, params = onn_apply_fn(ONN((4, 16, 12, 4), rngs=nnx.Rngs(5), output_shift=1.5))
    before = _wrong_symbols(apply_fn, params, dataset)
    refit = refit_last_layer(apply_fn, params, dataset, iterations=6)
    after = _wrong_symbols(apply_fn, refit.params, dataset)
    # The refit computes the outputs in another order than the ONN's forward: an input
    # within float32 rounding of a threshold may be decided the other way (at most 2 here).
    np.testing.assert_allclose(refit.wrong_before, before, atol=2)
    np.testing.assert_allclose(refit.wrong_after, after, atol=2)
    assert all(a <= b for a, b in zip(refit.wrong_after, refit.wrong_before, strict=True))
    assert sum(refit.wrong_after) < sum(refit.wrong_before)
    assert all(a <= b for a, b in zip(refit.loss_after, refit.loss_before, strict=True))
    # A symbol the refit did not improve keeps its trained row exactly; only the last
    # layer changed.
    old, new = onn_weights(params), onn_weights(refit.params)
    for k, (a, b) in enumerate(zip(refit.wrong_after, refit.wrong_before, strict=True)):
        if a == b:
            np.testing.assert_array_equal(new[-1][0][k], old[-1][0][k])
            np.testing.assert_array_equal(new[-1][1][k], old[-1][1][k])
    for (w0, b0), (w1, b1) in zip(old[:-1], new[:-1], strict=True):
        np.testing.assert_array_equal(w1, w0)
        np.testing.assert_array_equal(b1, b0)
    assert json.loads(json.dumps(refit.to_json(), allow_nan=False))["wrong_symbols_after"] == list(
        refit.wrong_after
    )


def test_with_last_layer_replaces_only_the_last_layer():
    _, params = onn_apply_fn(ONN((3, 5, 4, 2), rngs=nnx.Rngs(1)))
    kernel, bias = jnp.full((4, 2), 0.5), jnp.array([1.0, -1.0])
    replaced = onn_weights(with_last_layer(params, kernel, bias))
    original = onn_weights(params)
    np.testing.assert_array_equal(replaced[-1][0], np.full((2, 4), 0.5))
    np.testing.assert_array_equal(replaced[-1][1], [1.0, -1.0])
    for (w0, b0), (w1, b1) in zip(original[:-1], replaced[:-1], strict=True):
        np.testing.assert_array_equal(w1, w0)
        np.testing.assert_array_equal(b1, b0)


def test_refit_arguments_and_config_are_checked():
    dataset = TwoDigitDataset()
    apply_fn, params = _identity_features_onn(np.eye(2), np.zeros(2))
    for bad in ({"tolerance": 0.5}, {"tolerance": 0.0}, {"iterations": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            refit_last_layer(apply_fn, params, dataset, **bad)
    # 8b4s approximates every matrix: its last one cannot be re-solved freely.
    with pytest.raises(ValueError, match="refit_iterations=5 re-solves weight matrix 6"):
        TrainConfig(scenario="8b4s", refit_iterations=5)
    with pytest.raises(ValueError, match="refit_tolerance"):
        TrainConfig(scenario="8b4s", approx="none", refit_iterations=5, refit_tolerance=0.6)
    config = TrainConfig(scenario="8b8s", refit_iterations=5)  # layers 2-7: the last is free
    assert TrainConfig.from_json(config.to_json()) == config
    assert "refit_iterations" not in TrainConfig().to_json()  # old records stay loadable


def _short_refit_run(*, steps_per_epoch: int, refit_iterations: int) -> TrainConfig:
    """Two short epochs of 8b4s with a free last matrix, refit at the end."""
    return TrainConfig(
        scenario="8b4s",
        approx="none",
        epochs=2,
        steps_per_epoch=steps_per_epoch,
        switch_epoch=1,
        checkpoint_every=1,
        refit_iterations=refit_iterations,
    )


def test_a_run_refits_at_its_end_and_its_checkpoint_holds_the_refit_network(tmp_path):
    config = _short_refit_run(steps_per_epoch=10, refit_iterations=4)
    result = train_onn(config, tmp_path, progress=False)
    refit = result.record["history"]["refit"]
    assert result.epochs == 2 and refit["seconds"] > 0
    assert all(
        a <= b
        for a, b in zip(refit["wrong_symbols_after"], refit["wrong_symbols_before"], strict=True)
    )
    assert sum(refit["wrong_symbols_after"]) < sum(refit["wrong_symbols_before"])
    # The reported accuracy is the refit network's, and it is what the run directory holds.
    loaded = load_run(tmp_path)
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == result.evaluation.correct
    assert again.error_histogram == result.evaluation.error_histogram
    wrong_symbols = _wrong_symbols(loaded.apply_fn, loaded.params, loaded.dataset)
    np.testing.assert_allclose(wrong_symbols, refit["wrong_symbols_after"], atol=2)
    # A finished run resumes to its stored result without refitting again.
    resumed = train_onn(config, tmp_path, resume=True, progress=False)
    assert resumed.record == result.record


def test_a_data_parallel_run_refits_on_one_device_and_stays_replicated(tmp_path):
    from jax.sharding import Mesh

    config = _short_refit_run(steps_per_epoch=5, refit_iterations=3)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = train_onn(config, tmp_path / "mesh", progress=False, mesh=mesh)
    assert sharded.record["devices"] == len(jax.devices()) == 8
    # The run's refit is the one-device refit of its own trained network, exactly (the
    # data-parallel epochs themselves differ from one device's by float reassociation).
    plain = dataclasses.replace(config, refit_iterations=0)
    unrefit = train_onn(plain, tmp_path / "plain", progress=False, mesh=mesh)
    assert "refit" not in unrefit.record["history"]
    trained = load_run(tmp_path / "plain")
    expected = refit_last_layer(
        trained.apply_fn,
        trained.params,
        trained.dataset,
        tolerance=config.refit_tolerance,
        iterations=config.refit_iterations,
    ).to_json()
    record = sharded.record["history"]["refit"]
    assert {key: record[key] for key in expected} == expected
    loaded = load_run(tmp_path / "mesh")
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == sharded.evaluation.correct
