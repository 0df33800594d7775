"""Compiling ahead on a second thread: the same run, and every program compiled once."""

import jax
import numpy as np
import pytest

from optinc_jax import TrainConfig, make_scenario, register_scenario, train_onn

register_scenario(
    make_scenario("tiny-ahead", bits=4, servers=2, layers=(2, 8, 8, 2), approx=(2,), inputs=2),
    overwrite=True,
)
# focus (a stage-1 epoch with the hard set), a switch to stage 2, a projection every epoch
CONFIG = TrainConfig(
    scenario="tiny-ahead",
    epochs=6,
    switch_epoch=3,
    batch_size=4,
    focus_fraction=0.25,
    stop_at_full_accuracy=False,
)


def _train(config, workdir, compile_ahead: bool, compilations):
    """The run from empty caches, and ``(thread, program)`` of every backend compilation."""
    with compilations() as compiled:
        result = train_onn(config, workdir, progress=False, compile_ahead=compile_ahead)
    return result, compiled


def _assert_same_run(a, b):
    """The same computation: every loss, every evaluation and the final parameters."""
    assert a.record["history"] == b.record["history"]
    assert a.evaluation.correct == b.evaluation.correct
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _threads(compiled) -> list[str]:
    return [thread for thread, _ in compiled]


# every epoch evaluated; or the first not (the scoring pass compiled ahead all the same)
@pytest.mark.parametrize("config", [CONFIG, CONFIG.replace(stage1_eval_every=2)])
def test_compiling_ahead_changes_nothing_but_the_thread(tmp_path, config, compilations):
    ahead, ahead_compiled = _train(config, tmp_path / "ahead", True, compilations)
    plain, plain_compiled = _train(config, tmp_path / "plain", False, compilations)
    _assert_same_run(ahead, plain)
    # the same programs, none twice: some moved to the second thread (the three epochs,
    # the scoring pass, the projection, the finiteness check, the epoch keys)
    assert set(_threads(plain_compiled)) == {"MainThread"}
    moved = [name for name in _threads(ahead_compiled) if name.startswith("ahead")]
    assert len(moved) >= 7
    assert sorted(program for _, program in ahead_compiled) == sorted(
        program for _, program in plain_compiled
    )
    # every epoch program (stage 1, stage 1 focused, stage 2) compiled while the main thread
    # did something else: the first one while it computed the initial parameters
    epochs = [thread for thread, program in ahead_compiled if program == "train_epoch"]
    assert len(epochs) == 3 and all(thread.startswith("ahead") for thread in epochs)
    on_main = {program for thread, program in ahead_compiled if thread == "MainThread"}
    assert not on_main & {"train_epoch", "_all_finite", "_project", "_score"}


def test_a_directory_left_without_a_checkpoint_compiles_its_first_epoch_itself(
    tmp_path, compilations
):
    # a run killed before its first checkpoint leaves the folder: trained from the start,
    # the first epoch compiled on the main thread, what follows it ahead
    (tmp_path / "ahead" / "checkpoints").mkdir(parents=True)
    ahead, compiled = _train(CONFIG, tmp_path / "ahead", True, compilations)
    plain, _ = _train(CONFIG, tmp_path / "plain", False, compilations)
    _assert_same_run(ahead, plain)
    epochs = [thread for thread, program in compiled if program == "train_epoch"]
    assert epochs[0] == "MainThread" and len(epochs) == 3
    assert all(thread.startswith("ahead") for thread in epochs[1:])


def test_a_resumed_run_compiles_on_its_own_thread_to_the_same_result(
    tmp_path, train_killed_after, compilations
):
    config = CONFIG.replace(switch_epoch=1, checkpoint_every=2)
    train_killed_after(config, tmp_path / "run", 2)
    with compilations() as compiled:
        resumed = train_onn(config, tmp_path / "run", progress=False, resume=True)
    # the resumed run restores its hard set and stage and compiles them itself
    assert compiled and set(_threads(compiled)) == {"MainThread"}
    whole = train_onn(config, tmp_path / "whole", progress=False)
    assert resumed.record["history"] == whole.record["history"]
