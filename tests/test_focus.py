"""Focused sampling: margins, the hard set, the focused draw, and the trainer's records."""

import json
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optinc_jax import (
    HardSet,
    compile_hard_samples,
    draw_epoch_indices,
    find_hard_samples,
    focus_draws,
    make_scenario,
    receiver,
    register_scenario,
    symbol_margins,
)
from optinc_jax.encoding.dataset import Samples
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.trainer import train_onn

register_scenario(
    make_scenario(
        "test-focus-4b2s",
        bits=4,
        servers=2,
        layers=(2, 64, 64, 64, 2),
        approx=(1, 2, 3, 4),
        inputs=2,
    ),
    overwrite=True,
)
TINY = TrainConfig(
    scenario="test-focus-4b2s",
    epochs=200,
    batch_size=8,
    switch_epoch=150,
    learning_rate=1e-2,
    checkpoint_every=25,
    focus_fraction=0.25,
)


def test_margins_exact_values():
    y = jnp.array([[0.1, 1.4, 3.9, -5.0], [0.5, 2.25, -0.2, jnp.nan]])
    target = jnp.array([[1, 1, 3, 0], [0, 2, 1, 2]])
    expected = [[-0.4, 0.1, 1.4, 5.5], [0.0, 0.25, -0.7, -jnp.inf]]
    np.testing.assert_allclose(symbol_margins(y, target), expected, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-3.0, 6.0, allow_nan=False, width=32).filter(lambda v: abs(v % 1 - 0.5) > 1e-3),
    st.integers(0, 3),
)
def test_margin_is_positive_exactly_when_the_receiver_decides_right(amplitude, level):
    margin = float(symbol_margins(jnp.float32(amplitude), jnp.int32(level)))
    right = int(receiver(jnp.float32(amplitude))) == level
    assert (margin > 0) == right
    # its size is the distance to the nearest threshold of the target's interval
    edges = [e for e in (level - 0.5, level + 0.5) if 0 < e < 3]
    assert abs(abs(margin) - min(abs(amplitude - e) for e in edges)) < 1e-5


class TableDataset(NamedTuple):
    """A dataset whose input is the sample index; the network is a per-sample table."""

    size: int
    bits: int = 4

    def samples(self, indices):
        target = (indices * 7) % 16
        symbols = jnp.stack([target % 4, target // 4], axis=-1)
        return Samples(indices[:, None].astype(jnp.float32), target, symbols)


def _table_apply(params, x):
    return params[x[:, 0].astype(jnp.int32)]


def test_hard_set_equals_brute_force():
    dataset = TableDataset(size=1000)
    rng = np.random.default_rng(0)
    samples = dataset.samples(jnp.arange(dataset.size))
    noise = rng.uniform(-0.8, 0.8, (dataset.size, 2)).astype(np.float32)
    table = np.asarray(samples.target_symbols, np.float32) + noise
    hard, diagnostics = find_hard_samples(
        _table_apply, jnp.asarray(table), dataset, margin=0.2, chunk_size=64
    )
    # brute force in numpy: a symbol is wrong beyond +-0.5 (inside the end levels)
    target = np.asarray(samples.target_symbols)
    low = np.where(target > 0, table - (target - 0.5), np.inf)
    high = np.where(target < 3, target + 0.5 - table, np.inf)
    margins = np.minimum(low, high)
    expected = np.nonzero(margins.min(-1) < 0.2)[0]
    assert int(hard.count) == len(expected) == diagnostics["hard_count"]
    np.testing.assert_array_equal(np.asarray(hard.indices)[: len(expected)], expected)
    assert diagnostics["symbol_errors"] == [int(c) for c in (margins <= 0).sum(0)]
    assert diagnostics["min_margin"] == pytest.approx(margins.min(), abs=1e-6)
    decided = np.clip(np.round(table), 0, 3)
    assert diagnostics["correct"] == int((decided == target).all(-1).sum())


def test_compiled_ahead_the_pass_compiles_nothing_more(compilations):
    dataset = TableDataset(size=300)
    table = jnp.asarray(np.random.default_rng(1).uniform(0, 3, (300, 2)), jnp.float32)
    options = {"margin": 0.2, "chunk_size": 64, "judged": (10, 290)}
    jax.clear_caches()
    compile_hard_samples(
        _table_apply, jax.ShapeDtypeStruct(table.shape, table.dtype), dataset, **options
    )
    with compilations(clear_caches=False) as compiled:
        _, diagnostics = find_hard_samples(_table_apply, table, dataset, **options)
    assert compiled == []
    assert 0 <= diagnostics["correct"] <= 280
    with pytest.raises(ValueError, match="margin"):
        compile_hard_samples(_table_apply, table, dataset, margin=0.7)


def test_plain_draw_is_the_permutation_of_earlier_versions():
    key = jax.random.key(3)
    indices = draw_epoch_indices(
        key, size=100, steps=6, batch_size=16, permutation_limit=1 << 22, focus=4, hard=None
    )
    np.testing.assert_array_equal(indices, jax.random.permutation(key, 100)[:96].reshape(6, 16))


def test_focused_draw_oversamples_the_hard_inputs():
    size, steps, batch = 10_000, 100, 128
    hard_indices = np.arange(0, size, 100)  # 1 % of the data
    padded = np.zeros(size, np.int32)
    padded[: len(hard_indices)] = hard_indices
    hard = HardSet(jnp.asarray(padded), jnp.int32(len(hard_indices)))
    focus = focus_draws(batch, 0.25)
    draws = np.asarray(
        draw_epoch_indices(
            jax.random.key(0),
            size=size,
            steps=steps,
            batch_size=batch,
            permutation_limit=1 << 22,
            focus=focus,
            hard=hard,
        )
    )
    assert draws.shape == (steps, batch) and draws.min() >= 0 and draws.max() < size
    # every focused column is a hard input; the plain columns are a permutation slice
    assert np.isin(draws[:, -focus:], hard_indices).all()
    assert len(np.unique(draws[:, :-focus])) == steps * (batch - focus)
    # expected hard share: 0.25 + 0.75 * 1 % = 25.75 %; the plain part's sd is below
    # 0.08 % (binomial bound), so +-0.5 % is over 6 sd; uniform sampling gives 1 %
    share = np.isin(draws, hard_indices).mean()
    assert 0.2525 < share < 0.2625
    # each hard input is drawn about equally often: 3,200 / 100 = 32 times, sd 5.6
    counts = np.bincount(draws[:, -focus:].ravel(), minlength=size)[hard_indices]
    assert counts.min() > 32 - 5 * 5.6 and counts.max() < 32 + 5 * 5.6


def test_empty_hard_set_falls_back_to_uniform():
    hard = HardSet(jnp.zeros(50, jnp.int32), jnp.int32(0))
    draws = np.asarray(
        draw_epoch_indices(
            jax.random.key(1),
            size=50,
            steps=40,
            batch_size=8,
            permutation_limit=1 << 22,
            focus=4,
            hard=hard,
        )
    )
    # 160 uniform draws over 50 samples: not all of them sample 0 (the padding)
    assert len(np.unique(draws[:, 4:])) > 30


def test_focus_config_validation_and_records():
    assert focus_draws(128, 0.0) == 0 and focus_draws(2, 0.99) == 1
    with pytest.raises(ValueError, match="focus_fraction"):
        TrainConfig(focus_fraction=1.0)
    with pytest.raises(ValueError, match="focus_margin"):
        TrainConfig(focus_margin=0.6)
    # the focus fields are optional in records: a record without them loads
    plain = TrainConfig().to_json()
    assert "focus_fraction" not in plain
    assert TrainConfig.from_json(plain) == TrainConfig()
    focused = TrainConfig(focus_fraction=0.5)
    assert TrainConfig.from_json(json.loads(json.dumps(focused.to_json()))) == focused


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    config = TINY.replace(stop_at_full_accuracy=False, checkpoint_every=4)
    return config, train_onn(config, tmp_path_factory.mktemp("straight"), progress=False)


def test_first_full_accuracy_is_recorded(straight):
    config, result = straight
    first = result.record["first_full_accuracy"]
    history = result.record["history"]
    accuracies = dict(zip(history["eval_epoch"], history["accuracy"], strict=True))
    expected = min(epoch for epoch, accuracy in accuracies.items() if accuracy == 1.0)
    assert first["epoch"] == expected < config.epochs
    assert 0 < first["train_seconds"] <= result.record["train_seconds"]
    # the focus diagnostics of every evaluation but the last (the full evaluation)
    assert history["scored_epoch"] == list(range(1, config.epochs))
    assert len(history["hard_count"]) == len(history["symbol_errors"]) == config.epochs - 1
    assert all(len(errors) == 2 for errors in history["symbol_errors"])
    assert history["min_margin"][expected - 1] > 0
    # the focus pass's count is the exhaustive evaluation's (run once, at the end)
    assert result.record["accuracy"] == history["accuracy"][-1]


def test_focused_run_resumes_to_the_uninterrupted_result(straight, tmp_path):
    config, result = straight
    first = result.record["first_full_accuracy"]["epoch"]
    kill_at = 4 * (first // 4 + 1) + 1  # after the first 100 % and a checkpoint

    class Killed(Exception):
        pass

    def kill(epoch, history):
        if epoch == kill_at:
            raise Killed

    with pytest.raises(Killed):
        train_onn(config, tmp_path, progress=False, on_epoch_end=kill)
    resumed = train_onn(config, tmp_path, progress=False, resume=True)
    chex.assert_trees_all_close(resumed.params, result.params, atol=0, rtol=0)
    ignore = ("train_seconds",)
    for name, values in result.record["history"].items():
        assert resumed.record["history"][name] == values, name
    assert resumed.record["first_full_accuracy"]["epoch"] == first
    assert {k for k in resumed.record["first_full_accuracy"]} == {"epoch", *ignore}


@pytest.mark.slow
def test_stop_margin_stops_at_the_first_wide_enough_100_percent(straight, tmp_path):
    config, result = straight
    history = result.record["history"]
    accuracy = dict(zip(history["eval_epoch"], history["accuracy"], strict=True))
    margins = dict(zip(history["scored_epoch"], history["min_margin"], strict=True))
    wide = [e for e, m in margins.items() if accuracy[e] == 1.0 and m >= 0.1]
    expected = min(wide) if wide else config.epochs
    stopped = train_onn(
        config.replace(stop_at_full_accuracy=True, stop_margin=0.1), tmp_path, progress=False
    )
    # stopping does not change the trajectory: the same epochs, and no earlier stop
    assert stopped.epochs == expected
    first = result.record["first_full_accuracy"]["epoch"]
    assert stopped.record["first_full_accuracy"]["epoch"] == first <= expected
