import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optinc_jax import (
    NoiseFinetuneConfig,
    TrainConfig,
    circuit_forward,
    circuit_settings,
    compile_circuit,
    deploy,
    evaluate_finetune,
    finetune_circuit,
    load_circuit,
    load_run,
    make_scenario,
    robustness_sweep,
    save_circuit,
    train_onn,
    trial_counts,
    verify_circuit,
    with_settings,
)
from optinc_jax.learning import finetune as finetune_module

SCENARIO = make_scenario(
    "finetune-4b2s", bits=4, servers=2, layers=(2, 64, 64, 64, 2), approx=(1, 2, 3, 4), inputs=2
)
BASE = TrainConfig(
    scenario=SCENARIO,
    epochs=200,
    batch_size=8,
    switch_epoch=150,
    learning_rate=1e-2,
    checkpoint_every=50,
)
NOISE = {"noise_model": "phase", "noise_strength": 0.01, "noise_epochs": 1}
# Measured on this network: 96.7 % at 0.01 rad, 99.2 % after these 4 epochs.
TUNE = NoiseFinetuneConfig(
    strength=0.01, epochs=4, steps_per_epoch=40, batch_size=16, learning_rate=1e-3, trials=8
)
# The fields of a TrainConfig record before the noise_* options existed.
OLD_FIELDS = {
    "scenario", "approx", "epochs", "batch_size", "steps_per_epoch", "learning_rate",
    "schedule", "warmup_fraction", "switch_epoch", "stage2", "symbol_weight_base",
    "project_every", "project_start", "approx_side", "refine_steps", "eval_every",
    "eval_chunk_size", "checkpoint_every", "stop_at_full_accuracy", "seed",
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny network trained to 100 %, then fine-tuned by the trainer option."""
    workdir = tmp_path_factory.mktemp("finetune_run")
    config = BASE.replace(**NOISE, noise_learning_rate=TUNE.learning_rate)
    return workdir, config, train_onn(config, workdir, progress=False)


@pytest.fixture(scope="module")
def circuit(run):
    return deploy(run[0])[0]


# ------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_model": "heat"}, "noise_model must be one of"),
        ({"strength": -0.1}, "strength must be"),
        ({"strength": float("nan")}, "strength must be a finite number"),
        ({"noise_model": "dac", "strength": 6.5}, "strength must be a whole number of bits"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"steps_per_epoch": 1.5}, "steps_per_epoch must be an integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"learning_rate": -1e-3}, "learning_rate must be"),
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer in"),
    ],
)
def test_invalid_finetune_fields_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        NoiseFinetuneConfig(**changes)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise_epochs": 2}, "noise_model must be set"),
        ({"noise_strength": 0.01}, "noise_model must be set"),
        ({"noise_model": "phase"}, "noise_epochs must be >= 1"),
        ({"noise_model": "heat", "noise_epochs": 1}, "noise_model must be one of"),
        ({"noise_model": "phase", "noise_epochs": -1}, "noise_epochs must be an integer >= 0"),
        ({"noise_model": "phase", "noise_epochs": 1, "noise_strength": -1.0}, "noise_strength"),
        ({"noise_model": "dac", "noise_epochs": 1, "noise_strength": 6.5}, "whole number"),
        ({"noise_model": "phase", "noise_epochs": 1, "noise_learning_rate": -1.0}, "noise_lea"),
    ],
)
def test_invalid_trainer_noise_options_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**changes)
    assert "\n" not in str(error.value)


def test_config_records_round_trip_and_old_records_load():
    assert NoiseFinetuneConfig.from_json(TUNE.to_json()) == TUNE
    with pytest.raises(ValueError, match=r"unknown keys \['momentum'\]"):
        NoiseFinetuneConfig.from_json({**TUNE.to_json(), "momentum": 0.9})
    # Off, the record is exactly that of earlier versions, and such a record loads.
    document = TrainConfig().to_json()
    assert set(document) == OLD_FIELDS
    assert TrainConfig.from_json(document) == TrainConfig()
    on = TrainConfig(**NOISE)
    assert set(on.to_json()) == OLD_FIELDS | set(NOISE)
    assert TrainConfig.from_json(json.loads(json.dumps(on.to_json()))) == on
    with pytest.raises(ValueError, match=r"missing keys \['seed'\]"):
        TrainConfig.from_json({k: v for k, v in document.items() if k != "seed"})


# ------------------------------------------------------------------- fine-tuning


def test_settings_are_the_real_physical_knobs_and_round_trip(circuit):
    svd = compile_circuit(
        {"weights_0": np.array([[1.0, 2.0], [0.5, -1.0]]), "biases_0": np.zeros(2),
         "input_shift": 0.0, "input_scale": 1.0, "output_scale": 1.0, "output_shift": 0.0,
         "bits": np.int64(4), "servers": np.int64(2), "inputs": np.int64(2)}
    )  # fmt: skip
    assert set(circuit_settings(svd)[0]) == {
        "input_mesh", "attenuators", "output_mesh", "gain", "bias"
    }  # fmt: skip
    assert set(circuit_settings(circuit)[0]) == {"meshes", "attenuators", "gain", "bias"}
    for chip in (svd, circuit):
        settings = circuit_settings(chip)
        assert all(np.isrealobj(leaf) for leaf in jax.tree_util.tree_leaves(settings))
        chex.assert_trees_all_equal(with_settings(chip, settings), chip)
    with pytest.raises(ValueError, match="one entry per stage"):
        with_settings(circuit, settings[:1])


def test_zero_strength_and_zero_learning_rate_return_the_same_circuit(circuit):
    config = TUNE.replace(strength=0.0, learning_rate=0.0)
    tuned, history = finetune_circuit(circuit, config)
    assert tuned is circuit
    assert history["selected_epoch"] == 0 and history["epoch"] == [0, 1, 2, 3, 4]
    # Nothing moved: every epoch measures what the input measures, noise-free at strength 0.
    assert history["ideal_accuracy"] == [1.0] * 5
    assert history["noisy_accuracy"] == [1.0] * 5
    assert history["noisy_loss"][1] == pytest.approx(history["noisy_loss"][0], rel=1e-5)
    json.dumps(history, allow_nan=False)


@pytest.mark.slow
def test_evaluation_counts_are_those_of_the_robustness_sweep(circuit):
    result = evaluate_finetune(circuit, TUNE)
    sweep = robustness_sweep(circuit, "phase", [TUNE.strength], TUNE.trials, TUNE.seed)
    total = sweep["samples"]
    assert [c / total for c in result.noisy_correct] == sweep["accuracy_trials"][0]
    assert result.noisy_accuracy == pytest.approx(sweep["accuracy_mean"][0], abs=1e-12)
    assert result.ideal_accuracy == verify_circuit(circuit)["accuracy"] == 1.0


def test_trainer_option_fine_tunes_and_records(run):
    workdir, config, result = run
    assert result.evaluation.accuracy == 1.0
    record = json.loads((workdir / "result.json").read_text())
    entry = record["noise_finetune"]
    assert entry["status"] == "finished" and entry["circuit"] == "circuit_finetuned.npz"
    assert NoiseFinetuneConfig.from_json(entry["config"]) == TUNE.replace(
        epochs=1,
        steps_per_epoch=NoiseFinetuneConfig().steps_per_epoch,
        batch_size=NoiseFinetuneConfig().batch_size,
        trials=NoiseFinetuneConfig().trials,
    )
    assert entry["ideal_accuracy_before"] == entry["ideal_accuracy_after"] == 1.0
    assert entry["noisy_accuracy_after"] >= entry["noisy_accuracy_before"]
    assert TrainConfig.from_json(record["config"]) == config
    assert load_run(workdir).config == config
    tuned = load_circuit(workdir / "circuit_finetuned.npz")
    assert verify_circuit(tuned)["accuracy"] == 1.0
    # A finished run asked to resume returns its stored record, fine-tuning included.
    assert train_onn(config, workdir, resume=True, progress=False).record == record


def test_trainer_skips_fine_tuning_short_of_full_accuracy(tmp_path):
    config = BASE.replace(**NOISE, epochs=1)
    result = train_onn(config, tmp_path, progress=False)
    assert result.evaluation.accuracy < 1.0
    entry = result.record["noise_finetune"]
    assert entry["status"] == "skipped" and "not at projected 100 %" in entry["reason"]
    assert not (tmp_path / "circuit_finetuned.npz").exists()


def test_short_fine_tune_lowers_the_noisy_loss_and_keeps_the_file_format(circuit, tmp_path):
    tuned, history = finetune_circuit(circuit, TUNE)
    assert history["selected_epoch"] > 0 and tuned is not circuit
    assert history["ideal_accuracy"][history["selected_epoch"]] == 1.0
    # Measured on chips the selection never saw.
    fresh = TUNE.replace(seed=7, trials=16)
    before, after = evaluate_finetune(circuit, fresh), evaluate_finetune(tuned, fresh)
    assert after.ideal_accuracy == 1.0
    assert after.noisy_loss < before.noisy_loss
    # Same structure, same file format: the file round trip is exact.
    assert jax.tree_util.tree_structure(tuned) == jax.tree_util.tree_structure(circuit)
    chex.assert_trees_all_equal_shapes(tuned, circuit)
    reloaded = load_circuit(save_circuit(tmp_path / "tuned.npz", tuned))
    chex.assert_trees_all_equal(reloaded, tuned)
    # The digital reference is the network the fine-tuned optics compute.
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 3, (16, 2)))
    deviation = verify_circuit(reloaded)["max_abs_deviation"]
    assert deviation < 1e-4
    chex.assert_trees_all_close(circuit_forward(reloaded, x), circuit_forward(tuned, x))


def test_an_epoch_compiles_once_and_an_equal_run_reuses_it(circuit):
    finetune_circuit(circuit, TUNE)
    size = finetune_module._finetune_epoch._cache_size()
    finetune_circuit(circuit, TUNE.replace(seed=3, strength=0.02))
    assert finetune_module._finetune_epoch._cache_size() == size


@pytest.mark.slow
@pytest.mark.parametrize(("model", "strength"), [("receiver", 0.2), ("dac", 5), ("loss", 0.1)])
def test_other_models_train_with_finite_loss(circuit, model, strength):
    config = TUNE.replace(noise_model=model, strength=strength, epochs=1, steps_per_epoch=2)
    _, history = finetune_circuit(circuit, config)
    assert np.isfinite(history["train_loss"][1])


def test_dac_is_trained_straight_through(circuit):
    settings = jax.tree_util.tree_map(jnp.asarray, circuit_settings(circuit))

    def total(s):
        chip = finetune_module._noisy_circuit(circuit, s, jax.random.key(0), 3.0, "dac")
        return jnp.sum(jnp.asarray(chip.stages[0].meshes.theta))

    grad = jax.grad(total)(settings)
    np.testing.assert_array_equal(grad[0]["meshes"]["theta"], 1.0)


@pytest.mark.parametrize(("model", "strength"), [("phase", 0.05), ("receiver", 0.3)])
def test_the_vmapped_robustness_sweep_equals_a_python_loop_over_the_same_keys(
    circuit, model, strength
):
    key = jax.random.key(3)
    result = robustness_sweep(circuit, model, [0.0, strength], 3, key)
    keys = jax.random.split(key, 3)
    total = verify_circuit(circuit)["total"]
    loop = [trial_counts(circuit, model, strength, k)[0] / total for k in keys]
    assert result["accuracy_trials"] == [[1.0, 1.0, 1.0], loop]
    assert min(loop) < 1.0  # the noise is strong enough to matter
    np.testing.assert_allclose(result["accuracy_mean"][1], np.mean(loop))
    json.dumps(result, allow_nan=False)
