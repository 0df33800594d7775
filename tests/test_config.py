import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optinc_jax import get_scenario, make_scenario
from optinc_jax.learning.config import (
    TrainConfig,
    learning_rate_schedule,
    make_optimizer,
    steps_per_epoch,
)

CUSTOM = make_scenario("never-registered", bits=4, servers=3, layers=(2, 16, 2), inputs=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, "epochs must be an integer >= 1, got 2.5"),
        ({"batch_size": 8.0}, "batch_size must be an integer"),
        ({"seed": -1}, "seed must be an integer in"),
        ({"seed": 2**40}, "seed must be an integer in"),
        ({"seed": True}, "seed must be an integer"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number in \\(0.0"),
        ({"warmup_fraction": 1.0}, "warmup_fraction must be a finite number in \\[0.0, 1.0\\)"),
        ({"warmup_fraction": -0.1}, "warmup_fraction"),
        ({"warmup_fraction": 0.0}, "onecycle"),
        ({"schedule": "linear"}, "schedule must be one of 'onecycle', 'cosine', 'constant'"),
        ({"stage2": "paper"}, "stage2 must be one of"),
        ({"approx_side": "up"}, "approx_side must be one of 'left', 'right'"),
        ({"approx": "7"}, "out of range"),
        ({"scenario": "nope"}, "unknown scenario 'nope'"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"stop_at_full_accuracy": 1}, "stop_at_full_accuracy must be a bool"),
        ({"symbol_tolerance": 0.5}, "symbol_tolerance must be a finite number in \\[0.0, 0.5\\)"),
        ({"symbol_tolerance": -0.1}, "symbol_tolerance"),
    ],
)
def test_invalid_fields_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_nothing_is_clamped():
    # A batch larger than the dataset would have been one step of a partial epoch.
    with pytest.raises(ValueError, match="larger than the dataset"):
        steps_per_epoch(TrainConfig(batch_size=64), 49)
    assert steps_per_epoch(TrainConfig(batch_size=8), 49) == 6
    assert steps_per_epoch(TrainConfig(batch_size=64, steps_per_epoch=3), 49) == 3
    # No warm-up is allowed where the schedule has none to clamp.
    cosine = learning_rate_schedule(TrainConfig(schedule="cosine", warmup_fraction=0.0), 10)
    assert float(cosine(0)) == pytest.approx(3e-3)
    onecycle = learning_rate_schedule(TrainConfig(warmup_fraction=0.2), 100)
    assert float(onecycle(20)) == pytest.approx(3e-3, rel=1e-3)


def test_optimizer_rebuilt_from_an_equal_config_follows_the_same_trajectory():
    # The jitted epoch builds its optimizer from the config; that is only sound if a
    # rebuilt optimizer makes the very same updates, step by step, schedule included.
    def trajectory(config):
        tx = make_optimizer(config, 10)
        params, state, updates = {"w": jnp.zeros(3)}, None, []
        state = tx.init(params)
        for step in range(4):
            grads = {"w": jnp.array([1.0, -2.0, 0.5]) * (step + 1)}
            update, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, update)
            updates.append(np.asarray(update["w"]))
        return np.stack(updates)

    np.testing.assert_array_equal(trajectory(TrainConfig()), trajectory(TrainConfig()))
    assert not np.allclose(trajectory(TrainConfig()), trajectory(TrainConfig(learning_rate=1e-3)))


@pytest.mark.parametrize("scenario", ["8b4s", CUSTOM])
def test_json_round_trip_with_names_and_values(scenario):
    config = TrainConfig(scenario=scenario, approx=(1,), epochs=3)
    document = json.loads(json.dumps(config.to_json(), allow_nan=False))
    again = TrainConfig.from_json(document)
    assert again == config and hash(again) == hash(config)
    assert again.approx_layers() == (1,)


def test_scenario_values_need_no_registration():
    config = TrainConfig(scenario=CUSTOM)
    assert config.resolved_scenario() == CUSTOM
    assert config.approx_layers() == ()
    assert TrainConfig(scenario="8b8s").approx_layers() == get_scenario("8b8s").approx


def test_record_of_another_version_is_refused():
    document = TrainConfig().to_json()
    with pytest.raises(ValueError, match=r"missing keys \['seed'\]"):
        TrainConfig.from_json({k: v for k, v in document.items() if k != "seed"})
    with pytest.raises(ValueError, match=r"unknown keys \['momentum'\]"):
        TrainConfig.from_json({**document, "momentum": 0.9})


def test_symbol_tolerance_is_optional_in_records_and_round_trips():
    plain = TrainConfig().to_json()
    assert "symbol_tolerance" not in plain  # records of earlier versions still match
    assert TrainConfig.from_json(plain).symbol_tolerance == 0.0
    zoned = TrainConfig(symbol_tolerance=0.25)
    document = json.loads(json.dumps(zoned.to_json(), allow_nan=False))
    assert document["symbol_tolerance"] == 0.25
    assert TrainConfig.from_json(document) == zoned


def test_stage2_tolerance_is_optional_validated_and_falls_back_to_symbol_tolerance():
    plain = TrainConfig(symbol_tolerance=0.2)
    assert "stage2_tolerance" not in plain.to_json()  # records of earlier versions match
    assert plain.tolerance_of(1) == plain.tolerance_of(2) == 0.2
    split = TrainConfig(stage2_tolerance=0.3)
    assert (split.tolerance_of(1), split.tolerance_of(2)) == (0.0, 0.3)
    assert TrainConfig(stage2_tolerance=0.0, symbol_tolerance=0.2).tolerance_of(2) == 0.0
    document = json.loads(json.dumps(split.to_json(), allow_nan=False))
    assert document["stage2_tolerance"] == 0.3 and TrainConfig.from_json(document) == split
    for bad in (0.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="stage2_tolerance must be a finite number"):
            TrainConfig(stage2_tolerance=bad)


def test_condition_until_is_optional_validated_and_selects_the_matrices_to_condition():
    assert "condition_until" not in TrainConfig().to_json()  # earlier records still match
    conditioned = TrainConfig(scenario="8b8s", approx="none", condition_until=3)
    document = json.loads(json.dumps(conditioned.to_json(), allow_nan=False))
    assert document["condition_until"] == 3 and TrainConfig.from_json(document) == conditioned
    assert [conditioned.conditioned_layers(epoch) for epoch in (1, 3, 4)] == [
        (2, 3, 4, 5, 6, 7),
        (2, 3, 4, 5, 6, 7),
        (),
    ]
    # a subset kept full: the rest of the scenario's selection is conditioned, then released
    subset = TrainConfig(scenario="8b8s", approx="2,7", condition_until=1)
    assert subset.conditioned_layers(1) == (2, 3, 4, 5, 6, 7)
    assert subset.conditioned_layers(2) == (2, 7)
    # an approximated row is projected as before, whatever condition_until says
    full = TrainConfig(scenario="8b8s", condition_until=5)
    assert full.conditioned_layers(1) == full.conditioned_layers(9) == (2, 3, 4, 5, 6, 7)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="condition_until must be an integer"):
            TrainConfig(condition_until=bad)
