"""Compiling ahead on a second thread: the same run, and every program compiled once."""

import contextlib
import threading

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
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _compiling_threads():
    """From empty caches: the name of the thread of every backend compilation inside."""
    threads = []

    def listen(event, _duration, **_kwargs):
        if event == BACKEND_COMPILE:
            threads.append(threading.current_thread().name)

    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield threads
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _train(config, workdir, compile_ahead: bool):
    """The run from empty caches, and the thread of every backend compilation."""
    with _compiling_threads() as threads:
        result = train_onn(config, workdir, progress=False, compile_ahead=compile_ahead)
    return result, threads


# every epoch evaluated; or the first not (the scoring pass compiled ahead all the same)
@pytest.mark.parametrize("config", [CONFIG, CONFIG.replace(stage1_eval_every=2)])
def test_compiling_ahead_changes_nothing_but_the_thread(tmp_path, config):
    ahead, ahead_threads = _train(config, tmp_path / "ahead", True)
    plain, plain_threads = _train(config, tmp_path / "plain", False)
    # the same computation: every loss, every evaluation and the final parameters
    assert ahead.record["history"] == plain.record["history"]
    assert ahead.evaluation.correct == plain.evaluation.correct
    for a, b in zip(jax.tree.leaves(ahead.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the same programs, none twice: some moved to the second thread (the stage-2 epoch,
    # the focused epoch, the scoring pass, the projection)
    assert "MainThread" in plain_threads and set(plain_threads) == {"MainThread"}
    moved = [name for name in ahead_threads if name.startswith("ahead")]
    assert len(moved) >= 4
    assert len(ahead_threads) == len(plain_threads)


def test_a_resumed_run_compiles_on_its_own_thread_to_the_same_result(tmp_path, train_killed_after):
    config = CONFIG.replace(switch_epoch=1, checkpoint_every=2)
    train_killed_after(config, tmp_path / "run", 2)
    with _compiling_threads() as threads:
        resumed = train_onn(config, tmp_path / "run", progress=False, resume=True)
    # the resumed run restores its hard set and stage and compiles them itself
    assert threads and set(threads) == {"MainThread"}
    whole = train_onn(config, tmp_path / "whole", progress=False)
    assert resumed.record["history"] == whole.record["history"]
