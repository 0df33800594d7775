"""PaddedGrid (the grid with virtual levels of the last input) and training on it."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optinc_jax import (
    TrainConfig,
    evaluate_exhaustive,
    find_hard_samples,
    load_run,
    make_dataset_spec,
    make_padded_grid,
    train_onn,
)


@pytest.fixture(autouse=True, scope="module")
def _release_compilations():
    """Every padded set is a static argument: drop this module's executables afterwards."""
    yield
    jax.clear_caches()


SPECS = [(2, 3, 1), (4, 2, 2), (8, 2, 4)]


def _all(dataset):
    return dataset.samples(jnp.arange(dataset.size, dtype=jnp.int32))


def _brute_force(bits, servers, inputs, pad, continued=None):
    """Every padded sample by plain Python loops over the digits."""
    grid = make_dataset_spec(bits, servers, inputs)
    levels, r, symbols = grid.levels, grid.symbols_per_input, grid.symbols
    ranges = [range(levels)] * (inputs - 1) + [range(-pad, levels + pad)]
    rows = []
    # itertools.product varies the last range fastest; the index has digit 0 fastest.
    for digits in itertools.product(*reversed(ranges)):
        digits = digits[::-1]
        total = sum(a * 4 ** (r * m) for m, a in enumerate(digits))
        raw = total // servers  # Python floors below zero too
        held = min(max(raw, 0), 2**bits - 1)
        sym = [(held >> (2 * k)) & 3 for k in range(symbols)]
        if continued is None or -continued <= raw <= 2**bits - 1 + continued:
            sym[0] = raw % 4
        rows.append((digits, sum(s * 4**k for k, s in enumerate(sym)), sym))
    return rows


@pytest.mark.parametrize("bits, servers, inputs", SPECS)
@pytest.mark.parametrize("pad, continued", [(0, None), (3, None), (3, 0), (3, 2)])
def test_every_sample_matches_a_brute_force_enumeration(bits, servers, inputs, pad, continued):
    padded = make_padded_grid(make_dataset_spec(bits, servers, inputs), pad, continued)
    samples = _all(padded)
    rows = _brute_force(bits, servers, inputs, pad, continued)
    assert padded.size == len(rows)
    digits = np.array([row[0] for row in rows])
    # x = (N x) times the float32 reciprocal of N, as the grid's inputs (grid_inputs)
    expected_inputs = digits.astype(np.float32) * np.float32(1 / servers)
    np.testing.assert_array_equal(np.asarray(samples.inputs), expected_inputs)
    np.testing.assert_array_equal(np.asarray(samples.target), [row[1] for row in rows])
    np.testing.assert_array_equal(np.asarray(samples.target_symbols), [row[2] for row in rows])


@pytest.mark.parametrize("bits, servers, inputs", [(4, 2, 2), (8, 8, 4), (16, 4, 4)])
@pytest.mark.parametrize("pad", [2])
def test_the_real_grid_is_one_index_range_in_the_grids_order(bits, servers, inputs, pad):
    grid = make_dataset_spec(bits, servers, inputs)
    padded = make_padded_grid(grid, pad)
    start, stop = padded.grid_range()
    assert stop - start == grid.size
    picks = jnp.asarray(np.unique(np.r_[0, 1, grid.size - 1, np.arange(0, grid.size, 997)]))
    ours = padded.samples(picks + start)
    theirs = grid.samples(picks)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@settings(max_examples=30, deadline=None)
@given(pad=st.sampled_from([1, 4]), index=st.integers(0, 10**9))
def test_virtual_inputs_continue_symbol_0_and_hold_the_others(pad, index):
    grid = make_dataset_spec(8, 8)
    padded = make_padded_grid(grid, pad)
    index %= padded.size
    sample = padded.samples(jnp.array([index], jnp.int32))
    x = np.asarray(sample.inputs[0], np.float64)
    total = round(8 * float(x @ 4.0 ** np.arange(4)))  # S = N * exact average
    symbols = np.asarray(sample.target_symbols[0])
    assert symbols[0] == (total // 8) % 4
    held = min(max(total // 8, 0), 255)
    np.testing.assert_array_equal(symbols[1:], [(held >> (2 * k)) & 3 for k in (1, 2, 3)])
    start, stop = padded.grid_range()
    assert (start <= index < stop) == (0 <= x[3] <= 3)


@settings(max_examples=40, deadline=None)
@given(
    pad=st.sampled_from([1, 4]),
    continued=st.sampled_from([0, 3, 8, 40]),
    index=st.integers(0, 10**9),
)
def test_a_limited_continuation_continues_then_holds_the_ends_symbol(pad, continued, index):
    grid = make_dataset_spec(8, 8)
    throughout = make_padded_grid(grid, pad)
    limited = make_padded_grid(grid, pad, continued)
    index %= limited.size
    ours = limited.samples(jnp.array([index], jnp.int32))
    theirs = throughout.samples(jnp.array([index], jnp.int32))
    np.testing.assert_array_equal(np.asarray(ours.inputs), np.asarray(theirs.inputs))
    total = round(8 * float(np.asarray(ours.inputs[0], np.float64) @ 4.0 ** np.arange(4)))
    t = total // 8
    same = np.asarray(ours.target_symbols[0]) == np.asarray(theirs.target_symbols[0])
    assert same[1:].all()  # only symbol 0 can differ
    if -continued <= t <= 255 + continued:
        assert same[0]
    else:  # held: every symbol the end's, so the target is 0 below the range, 255 above
        assert int(ours.target[0]) == (0 if t < 0 else 255)


def test_it_is_a_value_and_refuses_bad_levels():
    grid = make_dataset_spec(8, 4)
    assert make_padded_grid(grid, 2) == make_padded_grid(grid, 2)
    assert hash(make_padded_grid(grid, 2)) == hash(make_padded_grid(grid, 2))
    assert make_padded_grid(grid, 2) != make_padded_grid(grid, 1)
    assert make_padded_grid(grid, 2) != make_padded_grid(grid, 2, 0)
    assert make_padded_grid(grid, 2).continued_values is None
    assert make_padded_grid(grid, 3).bits == 8
    with pytest.raises(ValueError, match="continued_values"):
        make_padded_grid(grid, 2, -1)
    with pytest.raises(ValueError, match="pad_levels"):
        make_padded_grid(grid, -1)
    with pytest.raises(ValueError, match="pad_levels"):
        make_padded_grid(grid, 1.5)
    with pytest.raises(ValueError, match="overflow int32"):
        make_padded_grid(make_dataset_spec(16, 4), 10**6)


def _tiny_config(**changes):
    return TrainConfig(
        scenario="8b4s",
        approx="2,3",
        epochs=3,
        steps_per_epoch=7,
        checkpoint_every=1,
        focus_fraction=0.25,
        **changes,
    )


def _leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]


def test_pad_levels_trains_on_the_padded_grid_and_judges_the_real_one(tmp_path):
    grid = make_dataset_spec(8, 4)
    padded = make_padded_grid(grid, 2)
    ours = train_onn(_tiny_config(pad_levels=2), tmp_path / "pad", progress=False)
    # The same steps as a run on the padded set itself: same draws, same focus scoring.
    plain = train_onn(_tiny_config(), tmp_path / "plain", progress=False, dataset=padded)
    for a, b in zip(_leaves(ours.params), _leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.record["steps_per_epoch"] == plain.record["steps_per_epoch"] == 7
    # ... but the accuracy is the real grid's, at every evaluation.
    real = evaluate_exhaustive(ours.apply_fn, ours.params, grid)
    assert (ours.evaluation.total, ours.evaluation.correct) == (grid.size, real.correct)
    assert ours.record["history"]["accuracy"][-1] == real.correct / grid.size
    # The epochs before the last are scored in the focus pass: over the real grid's index
    # range, where the run on the padded set itself counts the virtual inputs too.
    ours_errors = ours.record["history"]["symbol_errors"]
    plain_errors = plain.record["history"]["symbol_errors"]
    assert len(ours_errors) == len(plain_errors) == 2
    for judged, whole in zip(ours_errors, plain_errors, strict=True):
        assert sum(judged) < sum(whole)
    start, stop = padded.grid_range()
    assert ours.record["training_set"] == {
        "kind": "padded grid",
        "pad_levels": 2,
        "continued_values": None,
        "size": padded.size,
        "grid_range": [start, stop],
    }
    assert "training_set" not in plain.record
    assert ours.record["dataset"]["kind"] == "grid"
    # A reloaded run rebuilds the padded training set from its config.
    loaded = load_run(tmp_path / "pad")
    assert loaded.config.pad_levels == 2
    for a, b in zip(_leaves(loaded.params), _leaves(ours.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_scored_accuracy_counts_the_judged_range_only():
    grid = make_dataset_spec(8, 4)
    padded = make_padded_grid(grid, 3)
    run = TrainConfig(scenario="8b4s", approx="none", epochs=1, steps_per_epoch=3)
    from optinc_jax import build_onn, onn_apply_fn

    apply_fn, params = onn_apply_fn(build_onn(run.resolved_scenario().layers, symbols_per_input=1))
    _, whole_info = find_hard_samples(apply_fn, params, padded, margin=0.25)
    _, judged_info = find_hard_samples(
        apply_fn, params, padded, margin=0.25, judged=padded.grid_range()
    )
    real = evaluate_exhaustive(apply_fn, params, grid)
    _, real_info = find_hard_samples(apply_fn, params, grid, margin=0.25)
    assert judged_info["correct"] == real.correct == real_info["correct"]
    assert judged_info["symbol_errors"] == real_info["symbol_errors"]
    assert judged_info["min_margin"] == real_info["min_margin"]
    # The hard set still covers the whole padded set.
    assert judged_info["hard_count"] == whole_info["hard_count"] > real_info["hard_count"]
    # Over the whole padded set the virtual inputs' errors count too.
    assert all(
        a >= b
        for a, b in zip(whole_info["symbol_errors"], judged_info["symbol_errors"], strict=True)
    )
    assert sum(whole_info["symbol_errors"]) > sum(judged_info["symbol_errors"])
    with pytest.raises(ValueError, match="judged"):
        find_hard_samples(apply_fn, params, padded, margin=0.25, judged=(5, 5))
    with pytest.raises(ValueError, match="judged"):
        find_hard_samples(apply_fn, params, padded, margin=0.25, judged=(0, padded.size + 1))


def test_pad_levels_is_validated_recorded_only_when_set_and_resumes(tmp_path, train_killed_after):
    with pytest.raises(ValueError, match="pad_levels"):
        TrainConfig(pad_levels=-1)
    assert "pad_levels" not in TrainConfig().to_json()
    config = _tiny_config(pad_levels=1)
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="pad_levels=1 pads the scenario's grid"):
        train_onn(config, tmp_path / "custom", progress=False, dataset=make_dataset_spec(8, 4))
    # Killed after epoch 2 and resumed: the very same network as the uninterrupted run.
    whole = train_onn(config, tmp_path / "whole", progress=False)
    train_killed_after(config, tmp_path / "killed", 2)
    resumed = train_onn(config, tmp_path / "killed", progress=False, resume=True)
    for a, b in zip(_leaves(resumed.params), _leaves(whole.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.record["history"]["accuracy"] == whole.record["history"]["accuracy"]


def test_pad_continued_values_is_validated_recorded_and_trains_on_its_targets(tmp_path):
    with pytest.raises(ValueError, match="pad_continued_values"):
        TrainConfig(pad_levels=1, pad_continued_values=-1)
    with pytest.raises(ValueError, match=r"pad_continued_values=0 .* needs pad_levels > 0"):
        TrainConfig(pad_continued_values=0)
    assert "pad_continued_values" not in TrainConfig(pad_levels=1).to_json()
    config = _tiny_config(pad_levels=2, pad_continued_values=1)
    assert config.to_json()["pad_continued_values"] == 1
    assert TrainConfig.from_json(config.to_json()) == config
    # The same steps as a run on that padded set itself; the record names the continuation.
    ours = train_onn(config, tmp_path / "limited", progress=False)
    padded = make_padded_grid(make_dataset_spec(8, 4), 2, 1)
    plain = train_onn(_tiny_config(), tmp_path / "plain", progress=False, dataset=padded)
    for a, b in zip(_leaves(ours.params), _leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.record["training_set"]["continued_values"] == 1
    throughout = train_onn(_tiny_config(pad_levels=2), tmp_path / "throughout", progress=False)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_leaves(ours.params), _leaves(throughout.params), strict=True)
    )
    assert load_run(tmp_path / "limited").config.pad_continued_values == 1


def test_the_8b8s_preset_pads_four_levels():
    assert TrainConfig.for_scenario("8b8s").pad_levels == 4
    assert TrainConfig.for_scenario("8b4s").pad_levels == 0
