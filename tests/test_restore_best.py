"""restore_best: a run ends from its best scored epoch when the last one is worse."""

import dataclasses

import jax
import numpy as np
import pytest

from optinc_jax import (
    TrainConfig,
    evaluate_exhaustive,
    load_run,
    make_scenario,
    train_onn,
    training_preset,
)
from optinc_jax.learning import trainer as trainer_module

SCENARIO = make_scenario(
    "best-4b2s", bits=4, servers=2, layers=(2, 32, 32, 2), approx=(1, 2, 3), inputs=2
)
CONFIG = TrainConfig(
    scenario=SCENARIO,
    epochs=6,
    batch_size=8,
    steps_per_epoch=60,
    switch_epoch=3,
    checkpoint_every=1,
    stop_at_full_accuracy=False,
    restore_best=True,
)


@pytest.fixture
def spoiled_after(monkeypatch):
    """``spoil(epochs)``: from the call after ``epochs`` on, every epoch returns a network
    whose outputs ignore the input (its last kernel zeroed), so it is wrong on most inputs.

    Returns the list of epoch calls made so far (clear it to start counting again).
    """
    real_epoch = trainer_module.train_epoch
    calls = []
    spoil_from = []

    def spoiled(state, key, **kwargs):
        state, loss = real_epoch(state, key, **kwargs)
        calls.append(1)
        if len(calls) > spoil_from[0]:
            params = jax.tree_util.tree_map_with_path(
                lambda path, leaf: leaf * 0 if "2" in jax.tree_util.keystr(path) else leaf,
                state.params,
            )
            state = state._replace(params=params)
        return state, loss

    # the programs compiled ahead are the real epoch's (what the spoiled one calls)
    spoiled.lower = real_epoch.lower
    monkeypatch.setattr(trainer_module, "train_epoch", spoiled)

    def spoil(epochs: int) -> list:
        spoil_from[:] = [epochs]
        calls.clear()
        return calls

    return spoil


def _wrong_by_epoch(record: dict) -> dict[int, int]:
    total = record["total"]
    history = record["history"]
    return {
        epoch: round(total * (1 - accuracy))
        for epoch, accuracy in zip(history["eval_epoch"], history["accuracy"], strict=True)
    }


def test_the_last_epoch_worse_than_the_best_is_replaced_by_it(tmp_path, spoiled_after):
    spoiled_after(5)
    result = train_onn(CONFIG, tmp_path / "best", progress=False)
    record = result.record
    wrong = _wrong_by_epoch(record)
    scored = {epoch: count for epoch, count in wrong.items() if epoch < CONFIG.epochs}
    fewest = min(scored.values())
    latest_best = max(epoch for epoch, count in scored.items() if count == fewest)
    restore = record["history"]["restore_best"]
    assert restore["best_epoch"] == latest_best and restore["best_wrong"] == fewest
    # the spoiled last network is wrong on more inputs than the best epoch
    assert restore["last_wrong"] > fewest and restore["restored"]
    # the result is the best epoch's network: its count, also as the directory reloads it
    assert result.evaluation.total - result.evaluation.correct == fewest == wrong[CONFIG.epochs]
    loaded = load_run(tmp_path / "best")
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == result.evaluation.correct

    spoiled_after(5)
    last = train_onn(dataclasses.replace(CONFIG, restore_best=False), tmp_path / "last")
    assert "restore_best" not in last.record["history"]
    assert last.evaluation.total - last.evaluation.correct == restore["last_wrong"]
    # up to the last epoch both runs computed the same
    assert _wrong_by_epoch(last.record) | {CONFIG.epochs: fewest} == wrong


def test_an_unspoiled_run_ends_with_the_better_of_its_best_and_its_last(tmp_path):
    result = train_onn(CONFIG, tmp_path, progress=False)
    restore = result.record["history"]["restore_best"]
    wrong = _wrong_by_epoch(result.record)
    assert restore["best_wrong"] == min(c for e, c in wrong.items() if e < CONFIG.epochs)
    assert restore["restored"] == (restore["best_wrong"] < restore["last_wrong"])
    final = result.evaluation.total - result.evaluation.correct
    assert final == min(restore["best_wrong"], restore["last_wrong"])


def test_a_killed_run_restores_the_best_network_it_had_checkpointed(
    tmp_path, spoiled_after, train_killed_after
):
    # epochs 4-6 spoiled: the best network is one of epochs 1-3, held after the kill by
    # the checkpoint of epoch 4 alone
    spoiled_after(3)
    whole = train_onn(CONFIG, tmp_path / "whole", progress=False)
    assert whole.record["history"]["restore_best"]["best_epoch"] <= 3
    calls = spoiled_after(3)
    train_killed_after(CONFIG, tmp_path / "killed", 4)
    assert len(calls) == 4  # the kill came after epoch 4's checkpoint
    resumed = train_onn(CONFIG, tmp_path / "killed", resume=True, progress=False)
    assert len(calls) == CONFIG.epochs
    history, expected = resumed.record["history"], whole.record["history"]
    assert history["restore_best"] == expected["restore_best"]
    assert history["accuracy"] == expected["accuracy"]
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_best_is_validated_optional_in_records_and_in_the_8b8s_preset():
    with pytest.raises(ValueError, match="restore_best"):
        TrainConfig(restore_best=1)
    assert "restore_best" not in TrainConfig().to_json()
    config = TrainConfig(restore_best=True)
    assert TrainConfig.from_json(config.to_json()) == config
    assert training_preset("8b8s")["restore_best"] is True
    assert TrainConfig.for_scenario("8b8s").restore_best
    assert not TrainConfig.for_scenario("8b8s", restore_best=False).restore_best


def test_a_data_parallel_run_restores_its_best_network_replicated(tmp_path, spoiled_after):
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()), ("data",))
    spoiled_after(4)
    sharded = train_onn(CONFIG, tmp_path, progress=False, mesh=mesh)
    assert sharded.record["devices"] == len(jax.devices()) == 8
    restore = sharded.record["history"]["restore_best"]
    assert restore["restored"] and restore["best_epoch"] <= 4
    assert sharded.evaluation.total - sharded.evaluation.correct == restore["best_wrong"]
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.params))
    loaded = load_run(tmp_path)
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == sharded.evaluation.correct
