"""The annealed leak: exact activation values, the config's schedule, epochs and runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from optinc_jax import (
    ONN,
    TrainConfig,
    TrainState,
    build_training,
    evaluate_exhaustive,
    leaky_relu,
    make_scenario,
    onn_apply_fn,
    register_scenario,
    train_epoch,
    train_onn,
)

register_scenario(
    make_scenario(
        "test-leak-4b2s", bits=4, servers=2, layers=(2, 16, 16, 2), approx=(2,), inputs=2
    ),
    overwrite=True,
)
LEAKY = TrainConfig(
    scenario="test-leak-4b2s",
    epochs=4,
    batch_size=4,
    learning_rate=2e-2,
    switch_epoch=3,
    checkpoint_every=1,
    stop_at_full_accuracy=False,
    leak_start=0.3,
    leak_until=3,
)


# Normal floats only: XLA's CPU flushes subnormal results to zero, NumPy does not.
@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.floats(-1e3, 1e3, width=32).filter(lambda value: value == 0 or abs(value) > 1e-30),
        min_size=1,
        max_size=20,
    ),
    st.floats(0.0, 0.5, width=32).filter(lambda leak: leak == 0 or leak > 1e-3),
)
def test_leaky_relu_is_z_above_zero_and_leak_times_z_below(values, leak):
    z = np.asarray(values, np.float32)
    got = np.asarray(leaky_relu(jnp.asarray(z), jnp.float32(leak)))
    expected = np.where(z > 0, z, np.float32(leak) * z)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        np.asarray(leaky_relu(jnp.asarray(z), 0.0)), np.asarray(jax.nn.relu(jnp.asarray(z)))
    )


def test_leak_schedule_values_validation_and_records():
    config = TrainConfig(leak_start=0.25, leak_until=4)
    assert [config.leak_at(epoch) for epoch in range(6)] == [
        0.25,
        0.1875,
        0.125,
        0.0625,
        None,
        None,
    ]
    assert TrainConfig().leak_at(0) is None
    assert (
        "leak_start" not in TrainConfig().to_json() and "leak_until" not in TrainConfig().to_json()
    )
    assert TrainConfig.from_json(config.to_json()) == config
    for bad in ({"leak_start": 1.0, "leak_until": 3}, {"leak_start": -0.1, "leak_until": 3}):
        with pytest.raises(ValueError, match="leak_start"):
            TrainConfig(**bad)
    for bad in ({"leak_start": 0.2}, {"leak_until": 5}):
        with pytest.raises(ValueError, match="both positive"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="leak_until"):
        TrainConfig(leak_start=0.2, leak_until=1.5)


def test_onn_with_a_leak_matches_a_numpy_forward_and_without_it_the_relu():
    model = ONN((3, 5, 4, 2), rngs=nnx.Rngs(1))
    apply_fn, params = onn_apply_fn(model)
    x = jax.random.normal(jax.random.key(0), (7, 3))
    hidden = np.asarray(x, np.float64)
    for layer in list(model.layers)[:-1]:
        z = hidden @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...])
        hidden = np.where(z > 0, z, 0.25 * z)
    last = model.layers[-1]
    expected = hidden @ np.asarray(last.kernel[...], np.float64) + np.asarray(last.bias[...])
    np.testing.assert_allclose(
        np.asarray(apply_fn(params, x, 0.25)), expected, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        np.asarray(apply_fn(params, x, 0.0)), np.asarray(apply_fn(params, x))
    )


def _dead_first_unit(params):
    """Parameters whose first hidden unit is negative on every input of the grid."""
    pure = nnx.to_pure_dict(params)
    pure["layers"][0]["kernel"] = pure["layers"][0]["kernel"].at[:, 0].set(0.0)
    pure["layers"][0]["bias"] = pure["layers"][0]["bias"].at[0].set(-1.0)
    nnx.replace_by_pure_dict(params, pure)
    return params


def test_an_epoch_with_a_zero_leak_is_the_relu_epoch_and_a_leak_revives_a_dead_unit():
    config = LEAKY.replace(epochs=1, leak_start=0.0, leak_until=0)
    setup = build_training(config)

    def epoch(leak):
        state = TrainState(
            _dead_first_unit(jax.tree.map(jnp.copy, setup.initial_state.params)),
            jax.tree.map(jnp.copy, setup.initial_state.opt_state),
        )
        new_state, _ = train_epoch(
            state,
            jax.random.key(3),
            apply_fn=setup.apply_fn,
            dataset=setup.dataset,
            config=config,
            stage=1,
            steps=setup.steps_per_epoch,
            leak=leak,
        )
        return nnx.to_pure_dict(new_state.params)["layers"][0]

    relu, zero, leaky = epoch(None), epoch(jnp.float32(0.0)), epoch(jnp.float32(0.3))
    chex.assert_trees_all_close(zero, relu, atol=0, rtol=0)
    assert float(relu["bias"][0]) == -1.0  # no gradient reaches a dead unit
    assert float(leaky["bias"][0]) != -1.0 and np.any(np.asarray(leaky["kernel"][:, 0]) != 0)


def test_a_leaky_run_differs_while_it_leaks_reports_the_relu_network_and_resumes(
    tmp_path, train_killed_after
):
    straight = train_onn(LEAKY, tmp_path / "straight", progress=False)
    plain = train_onn(
        LEAKY.replace(leak_start=0.0, leak_until=0), tmp_path / "plain", progress=False
    )
    assert straight.record["history"]["loss"][0] != plain.record["history"]["loss"][0]
    assert straight.record["config"]["leak_start"] == 0.3
    relu = evaluate_exhaustive(straight.apply_fn, straight.params, build_training(LEAKY).dataset)
    assert straight.evaluation.correct == relu.correct

    train_killed_after(LEAKY, tmp_path / "resumed", 2)
    resumed = train_onn(LEAKY, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"] == straight.record["history"]
