"""The trainer and the evaluator take any dataset of the small Dataset protocol."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optinc_jax import encode_pam4, make_scenario
from optinc_jax.encoding.dataset import FunctionDataset, Samples
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.evaluate import evaluate_exhaustive
from optinc_jax.learning.step import train_epoch
from optinc_jax.learning.trainer import build_training, load_run, train_onn

# A user's own 4-bit dataset, nothing of the paper's grid: inputs (a, b) with a in 0..4 and
# b in 0..5, scaled onto [0, 3], and the target 2 a + b (in 0..13).
SCENARIO = make_scenario("weighted-4b", bits=4, servers=2, layers=(2, 32, 32, 2), inputs=2)


@dataclasses.dataclass(frozen=True)
class WeightedSumDataset:
    """Inputs ``(3 a / 4, 3 b / 5)``, target ``2 a + b``, for ``a < 5``, ``b < 6``."""

    @property
    def size(self) -> int:
        return 30

    @property
    def bits(self) -> int:
        return 4

    def samples(self, indices):
        a, b = indices % 5, indices // 5
        target = 2 * a + b
        inputs = jnp.stack([0.75 * a, 0.6 * b], axis=-1).astype(jnp.float32)
        return Samples(inputs, target.astype(jnp.int32), encode_pam4(target, bits=4))


def _brute_force_targets():
    return np.array([2 * (i % 5) + i // 5 for i in range(30)])


def test_a_dataset_defined_here_trains_to_exact_accuracy(tmp_path):
    dataset = WeightedSumDataset()
    np.testing.assert_array_equal(
        dataset.samples(jnp.arange(dataset.size)).target, _brute_force_targets()
    )
    config = TrainConfig(
        scenario=SCENARIO,
        epochs=100,
        batch_size=6,
        steps_per_epoch=20,
        switch_epoch=80,
        learning_rate=1e-2,
        checkpoint_every=50,
    )
    result = train_onn(config, tmp_path, progress=False, dataset=dataset)
    assert result.evaluation.total == 30
    assert result.evaluation.accuracy == 1.0, result.evaluation
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["dataset"]["kind"] == "custom" and record["dataset"]["size"] == 30
    # The run reloads only with its dataset, and then evaluates the same.
    with pytest.raises(ValueError, match="custom dataset"):
        load_run(tmp_path)
    loaded = load_run(tmp_path, dataset=dataset)
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, dataset)
    assert again == result.evaluation


def test_function_dataset_plugs_into_the_epoch_and_the_evaluator():
    def level(indices):
        target = indices % 4
        inputs = (indices % 4)[:, None].astype(jnp.float32)
        return Samples(inputs, target, encode_pam4(target, bits=2))

    dataset = FunctionDataset(size=16, bits=2, function=level)
    with pytest.raises(ValueError, match="size must be an integer"):
        FunctionDataset(size=0, bits=2, function=level)
    with pytest.raises(ValueError, match="2-bit targets"):
        build_training(TrainConfig(scenario="8b4s"), dataset)
    scenario = make_scenario("one-input", bits=2, servers=1, layers=(1, 8, 1), inputs=1)
    assert build_training(TrainConfig(scenario=scenario, batch_size=4)).dataset.size == 4
    config = TrainConfig(scenario=scenario, batch_size=4, epochs=2)
    setup = build_training(config, dataset)
    assert setup.steps_per_epoch == 4
    state, loss = train_epoch(
        setup.initial_state,
        jax.random.key(0),
        apply_fn=setup.apply_fn,
        dataset=dataset,
        config=config,
        stage=1,
        steps=setup.steps_per_epoch,
    )
    assert np.isfinite(float(loss))
    result = evaluate_exhaustive(setup.apply_fn, state.params, dataset, chunk_size=5)
    assert result.total == 16 and 0 <= result.correct <= 16
