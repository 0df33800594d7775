"""Evaluating stage 1 less often (``stage1_eval_every``): the rule, its validation and
records, and runs that train the very same network and resume to the same result."""

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import TrainConfig, make_scenario, register_scenario, train_onn

register_scenario(
    make_scenario("test-cadence-4b2s", bits=4, servers=2, layers=(2, 8, 8, 2), inputs=2),
    overwrite=True,
)
EVERY_EPOCH = TrainConfig(
    scenario="test-cadence-4b2s",
    epochs=7,
    switch_epoch=4,
    batch_size=4,
    learning_rate=1e-2,
    stop_at_full_accuracy=False,
)
SPARSE = EVERY_EPOCH.replace(stage1_eval_every=3)


@given(
    epochs=st.integers(1, 40),
    switch_epoch=st.integers(0, 45),
    eval_every=st.integers(1, 7),
    stage1_eval_every=st.one_of(st.none(), st.integers(1, 7)),
)
def test_evaluation_due_is_the_period_of_each_stage_and_both_ends(
    epochs, switch_epoch, eval_every, stage1_eval_every
):
    config = TrainConfig(
        epochs=epochs,
        switch_epoch=switch_epoch,
        eval_every=eval_every,
        stage1_eval_every=stage1_eval_every,
    )
    for epoch in range(1, epochs + 1):
        if stage1_eval_every is None:
            expected = epoch % eval_every == 0  # the rule before the field existed
        elif epoch <= switch_epoch:  # epoch `epoch` trained loss stage 1
            expected = epoch % stage1_eval_every == 0 or epoch == switch_epoch
        else:
            expected = epoch % eval_every == 0
        assert config.evaluation_due(epoch) == (expected or epoch == epochs), epoch


def test_the_8b4s_preset_evaluates_every_fifth_stage_1_epoch_then_every_epoch():
    config = TrainConfig.for_scenario("8b4s")
    due = [epoch for epoch in range(1, config.epochs + 1) if config.evaluation_due(epoch)]
    assert config.switch_epoch == 45
    assert due == [*range(5, 46, 5), *range(46, config.epochs + 1)]


def test_stage1_eval_every_is_validated_and_optional_in_records():
    with pytest.raises(ValueError, match="stage1_eval_every"):
        TrainConfig(stage1_eval_every=0)
    with pytest.raises(ValueError, match="stage1_eval_every"):
        TrainConfig(stage1_eval_every=2.5)
    # a focused run rescores its hard set from a checkpoint: it must fall on an evaluation
    with pytest.raises(ValueError, match=r"multiple of stage1_eval_every \(3\)"):
        TrainConfig(focus_fraction=0.25, stage1_eval_every=3, checkpoint_every=10)
    assert TrainConfig(focus_fraction=0.25, stage1_eval_every=5).checkpoint_every == 10
    # written only when set, so earlier records (without the key) load with the default
    assert "stage1_eval_every" not in EVERY_EPOCH.to_json()
    assert TrainConfig.from_json(EVERY_EPOCH.to_json()) == EVERY_EPOCH
    assert SPARSE.to_json()["stage1_eval_every"] == 3
    assert TrainConfig.from_json(SPARSE.to_json()) == SPARSE


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cadence")
    return (
        train_onn(EVERY_EPOCH, root / "every", progress=False),
        train_onn(SPARSE, root / "sparse", progress=False),
    )


def test_fewer_stage_1_evaluations_train_the_same_network(two_runs):
    every, sparse = two_runs
    every_history, sparse_history = every.record["history"], sparse.record["history"]
    assert every_history["eval_epoch"] == [1, 2, 3, 4, 5, 6, 7]
    assert sparse_history["eval_epoch"] == [3, 4, 5, 6, 7]
    # uniform sampling: the evaluations steer nothing, so every step is the same
    assert sparse_history["loss"] == every_history["loss"]
    for a, b in zip(jax.tree.leaves(every.params), jax.tree.leaves(sparse.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the accuracy of every epoch evaluated in both is the same number
    accuracy = dict(zip(every_history["eval_epoch"], every_history["accuracy"], strict=True))
    for epoch, value in zip(sparse_history["eval_epoch"], sparse_history["accuracy"], strict=True):
        assert accuracy[epoch] == value
    assert sparse.evaluation.correct == every.evaluation.correct


def test_a_focused_run_with_sparse_stage_1_evaluations_resumes_to_the_same_result(
    tmp_path, train_killed_after
):
    # the hard set of the focused draw is rescored at the epoch-2 checkpoint on resume
    config = SPARSE.replace(focus_fraction=0.25, stage1_eval_every=2, checkpoint_every=2)
    train_killed_after(config, tmp_path / "run", 3)
    resumed = train_onn(config, tmp_path / "run", progress=False, resume=True)
    whole = train_onn(config, tmp_path / "whole", progress=False)
    assert whole.record["history"]["eval_epoch"] == [2, 4, 5, 6, 7]
    assert resumed.record["history"] == whole.record["history"]
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
