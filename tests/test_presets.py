"""Per-scenario training presets: every registered one loads into a valid TrainConfig."""

import dataclasses

import pytest

from optinc_jax import (
    SCENARIOS,
    TRAINING_PRESETS,
    make_scenario,
    register_scenario,
    training_preset,
)
from optinc_jax.learning.config import TrainConfig


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_registered_preset_builds_a_valid_config(name):
    config = TrainConfig.for_scenario(name)
    for field, value in training_preset(name).items():
        assert getattr(config, field) == value
    assert config.resolved_scenario() == SCENARIOS[name]


def test_every_paper_scenario_has_a_preset():
    assert {"8b4s", "8b8s", "8b16s", "16b4s"} <= set(TRAINING_PRESETS)
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    for preset in TRAINING_PRESETS.values():
        assert set(preset) <= fields


def test_overrides_win_and_unset_options_keep_the_preset():
    config = TrainConfig.for_scenario("8b8s", epochs=7, seed=None, approx="none")
    assert config.epochs == 7 and config.seed == 0 and config.approx == "none"
    assert config.focus_fraction == training_preset("8b8s")["focus_fraction"]
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.for_scenario("8b4s", epoch=3)
    with pytest.raises(ValueError, match="unknown scenario"):
        TrainConfig.for_scenario("nope")


def test_a_registered_scenario_carries_its_preset():
    scenario = make_scenario("test-preset-4b2s", bits=4, servers=2, layers=(2, 8, 2), inputs=2)
    register_scenario(scenario, overwrite=True, training={"epochs": 11, "focus_fraction": 0.5})
    assert TrainConfig.for_scenario("test-preset-4b2s").epochs == 11
    # a value of the same name finds the preset too; an unregistered name has none
    assert TrainConfig.for_scenario(scenario).focus_fraction == 0.5
    assert training_preset("never-registered") == {}
    with pytest.raises(ValueError, match="mapping"):
        register_scenario(scenario, overwrite=True, training=[("epochs", 3)])
    # an invalid preset fails when a config is built from it, naming the field
    register_scenario(scenario, overwrite=True, training={"epochs": 0})
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.for_scenario(scenario)


def test_stop_margin_is_validated():
    assert TrainConfig(stop_margin=0.1).stop_margin == 0.1  # uniform sampling too
    with pytest.raises(ValueError, match="stop_margin"):
        TrainConfig(stop_margin=-0.1)
    with pytest.raises(ValueError, match="stop_margin"):
        TrainConfig(focus_fraction=0.25, stop_margin=0.7)
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainConfig(focus_fraction=0.25, eval_every=3, checkpoint_every=10)
    assert TrainConfig(focus_fraction=0.25, stop_margin=0.1).stop_margin == 0.1


def test_the_8b8s_row_without_approximation_is_conditioned_through_its_last_epoch():
    # The preset trains the full row as the approximated one (README, "Training recipe",
    # item 11): every epoch projects the matrices the scenario approximates, and only the
    # end-of-run finishing and refit see free matrices.
    approximated = TrainConfig.for_scenario("8b8s")
    full = TrainConfig.for_scenario("8b8s", approx="none")
    assert full.approx_layers() == () and approximated.approx_layers() == (2, 3, 4, 5, 6, 7)
    for epoch in (1, full.switch_epoch, full.epochs):
        assert full.conditioned_layers(epoch) == approximated.conditioned_layers(epoch)
    assert full.conditioned_layers(full.epochs + 1) == ()
    # the approximated row is what it was: its own matrices, projected to the end
    assert approximated.conditioned_layers(approximated.epochs + 1) == (2, 3, 4, 5, 6, 7)


def test_the_8b8s_preset_halves_the_stage2_learning_rate_and_an_override_restores_it():
    assert TrainConfig.for_scenario("8b8s").stage2_learning_rate_scale == 0.5
    full_rate = TrainConfig.for_scenario("8b8s", stage2_learning_rate_scale=1.0)
    assert full_rate.stage2_learning_rate_scale == 1.0
    assert TrainConfig.for_scenario("8b16s").stage2_learning_rate_scale == 1.0
