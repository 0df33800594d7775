"""Dead ReLU units: exact counts, revival that keeps the outputs, reset moments, runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optinc_jax import (
    ACTIVITY_SAMPLES,
    ONN,
    TrainConfig,
    dataset_unit_activity,
    hidden_unit_activity,
    layer_leaf,
    make_dataset_spec,
    make_scenario,
    onn_apply_fn,
    onn_weights,
    register_scenario,
    revive_dead_units,
    revived_optimizer_state,
    train_onn,
)

LAYERS = (3, 6, 5, 4, 2)


def _numpy_activity(params, x):
    """Brute force: per hidden layer, on how many rows of ``x`` each unit is positive."""
    hidden, counts = np.asarray(x, np.float64), []
    for weight, bias in onn_weights(params)[:-1]:
        hidden = np.maximum(hidden @ np.asarray(weight, np.float64).T + np.asarray(bias), 0.0)
        counts.append((hidden > 0).sum(axis=0))
    return counts


def _with_dead_units(params, dead_units):
    """Kills ``(layer, unit)`` pairs: zero incoming weights and a negative bias."""

    def kill(path, leaf):
        index, name = layer_leaf(path)
        for layer, unit in dead_units:
            if index == layer and name == "kernel":
                leaf = leaf.at[:, unit].set(0.0)
            if index == layer and name == "bias":
                leaf = leaf.at[unit].set(-1.0)
        return leaf

    return jax.tree_util.tree_map_with_path(kill, params)


@pytest.fixture
def onn_with_dead_units():
    apply_fn, params = onn_apply_fn(ONN(LAYERS, rngs=nnx.Rngs(3)))
    dead_units = [(0, 1), (0, 4), (2, 0)]
    return apply_fn, _with_dead_units(params, dead_units), dead_units


def test_activity_counts_agree_with_a_numpy_forward(onn_with_dead_units):
    apply_fn, params, dead_units = onn_with_dead_units
    x = jax.random.uniform(jax.random.key(0), (500, LAYERS[0]), minval=-1.0, maxval=1.0)
    counts = hidden_unit_activity(apply_fn, params, x)
    assert [count.shape for count in counts] == [(6,), (5,), (4,)]
    for got, want in zip(counts, _numpy_activity(params, x), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    for layer, unit in dead_units:
        assert int(counts[layer][unit]) == 0
    assert int(counts[0][0]) > 0


def test_revival_redraws_only_the_dead_units_and_keeps_the_outputs(onn_with_dead_units):
    apply_fn, params, dead_units = onn_with_dead_units
    x = jax.random.uniform(jax.random.key(1), (500, LAYERS[0]), minval=-1.0, maxval=1.0)
    dead = [count == 0 for count in hidden_unit_activity(apply_fn, params, x)]
    assert sum(int(mask.sum()) for mask in dead) >= len(dead_units)
    revived, masks = revive_dead_units(params, dead, jax.random.key(7))

    # A unit dead on x contributed nothing on x: the outputs there are unchanged.
    np.testing.assert_allclose(apply_fn(revived, x), apply_fn(params, x), rtol=0, atol=1e-6)
    before, after = onn_weights(params), onn_weights(revived)
    dead_in = [np.zeros(LAYERS[0], bool)] + [np.asarray(mask) for mask in dead]
    dead_out = [np.asarray(mask) for mask in dead] + [np.zeros(LAYERS[-1], bool)]
    for layer, ((old_w, old_b), (new_w, new_b)) in enumerate(zip(before, after, strict=True)):
        old_w, old_b, new_w, new_b = map(np.asarray, (old_w, old_b, new_w, new_b))
        expected = old_w.copy()
        expected[:, dead_in[layer]] = 0.0  # what a dead unit sends on starts at zero
        live = ~dead_out[layer]
        np.testing.assert_array_equal(new_w[live], expected[live])  # the rest untouched
        np.testing.assert_array_equal(new_b[live], old_b[live])
        revived_rows = new_w[dead_out[layer]]
        assert np.all(new_b[dead_out[layer]] == 0.0)
        assert np.all(revived_rows[:, dead_in[layer]] == 0.0)
        assert np.all(np.abs(revived_rows).sum(axis=1) > 0)  # redrawn
    # The revived units fire again, at LeCun scale.
    counts = hidden_unit_activity(apply_fn, revived, x)
    assert all(int(counts[layer][unit]) > 0 for layer, unit in dead_units if layer == 0)
    fresh = np.asarray(after[0][0])[np.asarray(dead[0])]
    assert 0.05 < np.std(fresh) * np.sqrt(LAYERS[0]) < 5.0
    # the masks mark exactly what changed or was zeroed
    for mask, old, new in zip(
        jax.tree_util.tree_leaves(masks),
        jax.tree_util.tree_leaves(params),
        jax.tree_util.tree_leaves(revived),
        strict=True,
    ):
        mask = np.asarray(mask)
        np.testing.assert_array_equal(np.asarray(new)[~mask], np.asarray(old)[~mask])


def test_no_dead_unit_changes_nothing_and_bad_masks_are_refused(onn_with_dead_units):
    _, params, _ = onn_with_dead_units
    none_dead = [jnp.zeros(width, bool) for width in LAYERS[1:-1]]
    same, masks = revive_dead_units(params, none_dead, jax.random.key(0))
    chex.assert_trees_all_close(same, params, atol=0, rtol=0)
    assert not any(bool(mask.any()) for mask in jax.tree_util.tree_leaves(masks))
    with pytest.raises(ValueError, match=r"widths \[6, 5, 4\]"):
        revive_dead_units(params, none_dead[:2], jax.random.key(0))
    with pytest.raises(ValueError, match="one mask per hidden layer"):
        revive_dead_units(params, [jnp.zeros(5, bool)] * 3, jax.random.key(0))


def test_revived_entries_restart_with_zero_adam_moments(onn_with_dead_units):
    _, params, _ = onn_with_dead_units
    tx = optax.adam(1e-2)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    for _ in range(3):
        _, state = tx.update(grads, state, params)
    dead = [jnp.arange(width) % 2 == 0 for width in LAYERS[1:-1]]
    _, masks = revive_dead_units(params, dead, jax.random.key(0))
    reset = revived_optimizer_state(tx, state, masks)
    adam, adam_reset = state[0], reset[0]
    assert int(adam_reset.count) == int(adam.count) == 3
    for moment, moment_reset in ((adam.mu, adam_reset.mu), (adam.nu, adam_reset.nu)):
        for mask, old, new in zip(
            jax.tree_util.tree_leaves(masks),
            jax.tree_util.tree_leaves(moment),
            jax.tree_util.tree_leaves(moment_reset),
            strict=True,
        ):
            mask = np.asarray(mask)
            assert np.all(np.asarray(new)[mask] == 0.0)
            np.testing.assert_array_equal(np.asarray(new)[~mask], np.asarray(old)[~mask])
            assert np.all(np.asarray(old) > 0.0)


def test_dataset_activity_uses_a_small_set_whole_and_draws_from_a_large_one():
    spec = make_dataset_spec(8, 4)  # 28,561 inputs: used whole
    apply_fn, params = onn_apply_fn(
        ONN((4, 8, 4), rngs=nnx.Rngs(0), input_shift=1.5, input_scale=2.0 / 3.0)
    )
    whole = dataset_unit_activity(apply_fn, params, spec, jax.random.key(0))
    inputs = spec.samples(jnp.arange(spec.size)).inputs
    np.testing.assert_array_equal(whole[0], hidden_unit_activity(apply_fn, params, inputs)[0])
    assert spec.size < ACTIVITY_SAMPLES
    large = make_dataset_spec(8, 8)  # 390,625 inputs: a draw of ACTIVITY_SAMPLES
    assert large.size > ACTIVITY_SAMPLES
    always_on = _always_on(params)
    counts = dataset_unit_activity(apply_fn, always_on, large, jax.random.key(0))
    assert int(counts[0][0]) == ACTIVITY_SAMPLES
    other = dataset_unit_activity(apply_fn, params, large, jax.random.key(1))
    again = dataset_unit_activity(apply_fn, params, large, jax.random.key(1))
    np.testing.assert_array_equal(other[0], again[0])


def _always_on(params):
    """Unit 0 of the first layer fires on every input (zero weights, bias 1)."""

    def set_unit(path, leaf):
        index, name = layer_leaf(path)
        if index == 0 and name == "kernel":
            return leaf.at[:, 0].set(0.0)
        if index == 0 and name == "bias":
            return leaf.at[0].set(1.0)
        return leaf

    return jax.tree_util.tree_map_with_path(set_unit, params)


register_scenario(
    make_scenario(
        "test-revive-4b2s", bits=4, servers=2, layers=(2, 32, 32, 2), approx=(2,), inputs=2
    ),
    overwrite=True,
)
REVIVING = TrainConfig(
    scenario="test-revive-4b2s",
    epochs=5,
    batch_size=4,
    learning_rate=5e-2,
    symbol_weight_base=1.0,
    switch_epoch=4,
    checkpoint_every=1,
    stop_at_full_accuracy=False,
    revive_until=4,
)


def test_a_reviving_run_records_its_revivals_and_resumes_to_the_same_result(
    tmp_path, train_killed_after
):
    straight = train_onn(REVIVING, tmp_path / "straight", progress=False)
    history = straight.record["history"]
    assert history["revived_epoch"] == [1, 2, 3, 4]
    assert all(len(counts) == 2 for counts in history["revived_units"])
    assert sum(map(sum, history["revived_units"])) > 0  # the high rate kills units
    alive = straight.record["alive_units"]
    assert len(alive) == 2 and all(0 <= count <= 32 for count in alive)
    plain = train_onn(REVIVING.replace(revive_until=0), tmp_path / "plain", progress=False)
    assert "revived_epoch" not in plain.record["history"]
    assert plain.record["history"]["loss"][0] == history["loss"][0]  # revival after epoch 1
    assert plain.record["history"]["loss"][1:] != history["loss"][1:]

    train_killed_after(REVIVING, tmp_path / "resumed", 3)
    resumed = train_onn(REVIVING, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"] == history


def test_revive_until_is_optional_and_validated():
    assert "revive_until" not in TrainConfig().to_json()
    config = TrainConfig(revive_until=3)
    assert TrainConfig.from_json(config.to_json()) == config
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="revive_until"):
            TrainConfig(revive_until=bad)
