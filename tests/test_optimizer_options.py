"""The optimizer's options (the biases' learning-rate scale, the stage-2 learning-rate scale,
Adam's epsilon): exact updates, validation, records, runs and resume."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from optinc_jax import (
    ONN,
    TrainConfig,
    learning_rate_schedule,
    make_optimizer,
    make_scenario,
    register_scenario,
    revived_optimizer_state,
    train_onn,
)

register_scenario(
    make_scenario("test-bias-4b2s", bits=4, servers=2, layers=(2, 16, 16, 2), inputs=2),
    overwrite=True,
)
SCALED = TrainConfig(
    scenario="test-bias-4b2s",
    epochs=4,
    batch_size=4,
    learning_rate=2e-2,
    switch_epoch=3,
    checkpoint_every=1,
    stop_at_full_accuracy=False,
    bias_learning_rate_scale=0.25,
)
STAGE2_SCALED = SCALED.replace(
    switch_epoch=2, bias_learning_rate_scale=1.0, stage2_learning_rate_scale=0.5
)


def _params():
    return nnx.state(ONN((2, 8, 8, 2), rngs=nnx.Rngs(0)), nnx.Param)


def _grads(params):
    return jax.tree.map(
        lambda leaf: jax.random.normal(jax.random.key(leaf.size), leaf.shape), params
    )


def _updates(config, params, grads, steps=3, stage=1):
    tx = make_optimizer(config, 100, stage=stage)
    state = tx.init(params)
    history = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        history.append(updates)
    return history


def test_biases_move_by_the_scale_times_adams_step_and_kernels_by_adams_step():
    params = _params()
    grads = _grads(params)
    plain = _updates(TrainConfig(learning_rate=1e-2), params, grads)
    scaled = _updates(TrainConfig(learning_rate=1e-2, bias_learning_rate_scale=0.25), params, grads)
    kinds = []
    for step_plain, step_scaled in zip(plain, scaled, strict=True):
        flat_plain = jax.tree_util.tree_flatten_with_path(step_plain)[0]
        flat_scaled = jax.tree.leaves(step_scaled)
        for (path, leaf_plain), leaf_scaled in zip(flat_plain, flat_scaled, strict=True):
            name = jax.tree_util.keystr(path)
            factor = 0.25 if "bias" in name else 1.0
            kinds.append(factor)
            np.testing.assert_allclose(
                np.asarray(leaf_scaled), factor * np.asarray(leaf_plain), rtol=1e-6, atol=0
            )
    assert 0.25 in kinds and 1.0 in kinds  # both kinds of leaf were checked
    # the default is plain Adam, so runs without the option compute what they did before
    default = make_optimizer(TrainConfig(learning_rate=1e-2), 100)
    adam = optax.adam(optax.cosine_onecycle_schedule(100, 1e-2, pct_start=0.2))
    chex.assert_trees_all_equal(
        default.update(grads, default.init(params), params)[0],
        adam.update(grads, adam.init(params), params)[0],
    )


def test_validation_and_records():
    assert "bias_learning_rate_scale" not in TrainConfig().to_json()
    config = TrainConfig(bias_learning_rate_scale=0.1)
    assert config.to_json()["bias_learning_rate_scale"] == 0.1
    assert TrainConfig.from_json(config.to_json()) == config
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="bias_learning_rate_scale"):
            TrainConfig(bias_learning_rate_scale=bad)


def test_a_scaled_run_differs_records_its_scale_and_resumes_bit_for_bit(
    tmp_path, train_killed_after
):
    straight = train_onn(SCALED, tmp_path / "straight", progress=False)
    plain = train_onn(
        SCALED.replace(bias_learning_rate_scale=1.0), tmp_path / "plain", progress=False
    )
    assert straight.record["history"]["loss"][1] != plain.record["history"]["loss"][1]
    assert straight.record["config"]["bias_learning_rate_scale"] == 0.25
    train_killed_after(SCALED, tmp_path / "resumed", 2)
    resumed = train_onn(SCALED, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"] == straight.record["history"]


def test_revival_zeroes_the_moments_inside_the_scaled_optimizer():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = make_optimizer(TrainConfig(bias_learning_rate_scale=0.5), 100)
    _, state = tx.update(grads, tx.init(params), params)
    masks = jax.tree.map(lambda leaf: jnp.arange(leaf.size).reshape(leaf.shape) % 2 == 0, params)
    revived = revived_optimizer_state(tx, state, masks)
    adam_before, adam_after = state[0][0], revived[0][0]
    for moment_before, moment_after in (
        (adam_before.mu, adam_after.mu),
        (adam_before.nu, adam_after.nu),
    ):
        for before, after, mask in zip(
            jax.tree.leaves(moment_before),
            jax.tree.leaves(moment_after),
            jax.tree.leaves(masks),
            strict=True,
        ):
            assert np.all(np.asarray(before) != 0)
            np.testing.assert_array_equal(np.asarray(after)[mask], 0)
            np.testing.assert_array_equal(np.asarray(after)[~mask], np.asarray(before)[~mask])


def test_stage_two_moves_by_the_scale_times_stage_ones_step_and_stage_one_is_plain_adam():
    params = _params()
    grads = _grads(params)
    config = TrainConfig(learning_rate=1e-2, stage2_learning_rate_scale=0.5)
    stage1 = _updates(config, params, grads, stage=1)
    stage2 = _updates(config, params, grads, stage=2)
    plain = _updates(TrainConfig(learning_rate=1e-2), params, grads)
    for one, two, adam in zip(stage1, stage2, plain, strict=True):
        # multiplying by 0.5 and by 1.0 is exact in binary floating point
        chex.assert_trees_all_equal(two, jax.tree.map(lambda leaf: 0.5 * leaf, one))
        chex.assert_trees_all_equal(one, adam)
    # both stages keep one state structure, so a run's state crosses the switch as it is
    assert jax.tree.structure(make_optimizer(config, 100, stage=1).init(params)) == (
        jax.tree.structure(make_optimizer(config, 100, stage=2).init(params))
    )
    with pytest.raises(ValueError, match="stage must be one of 1, 2"):
        make_optimizer(config, 100, stage=3)


@pytest.mark.parametrize("eps", [1e-8, 1e-5])
def test_adams_first_step_is_the_learning_rate_times_g_over_abs_g_plus_eps(eps):
    # After one step Adam's bias-corrected moments are g and g^2: the update is
    # -lr_0 g / (|g| + eps), which for gradients near eps shows the epsilon exactly.
    config = TrainConfig(learning_rate=1e-2, adam_eps=eps)
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([1e-6, -3e-6, 1e-5, 1.0], dtype=jnp.float32)}
    tx = make_optimizer(config, 100)
    update = np.asarray(tx.update(grads, tx.init(params), params)[0]["w"], dtype=np.float64)
    lr0 = float(learning_rate_schedule(config, 100)(0))
    g = np.asarray(grads["w"], dtype=np.float64)
    np.testing.assert_allclose(update, -lr0 * g / (np.abs(g) + eps), rtol=1e-5)
    # that the default is optax's Adam bit for bit is checked beside the biases' scale above


def test_adam_eps_and_stage2_scale_validation_and_records():
    record = TrainConfig().to_json()
    assert "adam_eps" not in record and "stage2_learning_rate_scale" not in record
    config = TrainConfig(adam_eps=1e-5, stage2_learning_rate_scale=0.25)
    assert config.to_json()["adam_eps"] == 1e-5
    assert config.to_json()["stage2_learning_rate_scale"] == 0.25
    assert TrainConfig.from_json(config.to_json()) == config
    for name in ("adam_eps", "stage2_learning_rate_scale"):
        for bad in (0.0, -1.0, float("nan"), float("inf"), True):
            with pytest.raises(ValueError, match=name):
                TrainConfig(**{name: bad})


def test_a_scaled_run_agrees_until_the_switch_records_its_scale_and_resumes_bit_for_bit(
    tmp_path, train_killed_after
):
    straight = train_onn(STAGE2_SCALED, tmp_path / "straight", progress=False)
    plain = train_onn(
        STAGE2_SCALED.replace(stage2_learning_rate_scale=1.0), tmp_path / "plain", progress=False
    )
    losses, plain_losses = straight.record["history"]["loss"], plain.record["history"]["loss"]
    assert losses[:2] == plain_losses[:2]  # stage 1 (epochs 1-2) is the same computation
    assert losses[2] != plain_losses[2]
    assert straight.record["config"]["stage2_learning_rate_scale"] == 0.5
    # killed inside stage 2
    train_killed_after(STAGE2_SCALED, tmp_path / "resumed", 3)
    resumed = train_onn(STAGE2_SCALED, tmp_path / "resumed", progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=0, rtol=0)
    assert resumed.record["history"] == straight.record["history"]
