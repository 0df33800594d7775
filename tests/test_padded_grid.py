"""PaddedGrid (the grid with virtual levels of the last input) and experiments.padded_grid."""

import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import padded_grid
from optinc_jax import (
    TrainConfig,
    evaluate_exhaustive,
    load_run,
    make_dataset_spec,
    make_padded_grid,
)

SPECS = [(2, 1, 1), (2, 3, 1), (4, 2, 2), (4, 3, 1), (8, 2, 4), (8, 4, 2)]


def _all(dataset):
    return dataset.samples(jnp.arange(dataset.size, dtype=jnp.int32))


def _brute_force(bits, servers, inputs, pad):
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
        sym[0] = raw % 4
        rows.append((digits, sum(s * 4**k for k, s in enumerate(sym)), sym))
    return rows


@pytest.mark.parametrize("bits, servers, inputs", SPECS)
@pytest.mark.parametrize("pad", [0, 1, 3])
def test_every_sample_matches_a_brute_force_enumeration(bits, servers, inputs, pad):
    padded = make_padded_grid(make_dataset_spec(bits, servers, inputs), pad)
    samples = _all(padded)
    rows = _brute_force(bits, servers, inputs, pad)
    assert padded.size == len(rows)
    digits = np.array([row[0] for row in rows])
    # x = (N x) times the float32 reciprocal of N, as the grid's inputs (grid_inputs)
    expected_inputs = digits.astype(np.float32) * np.float32(1 / servers)
    np.testing.assert_array_equal(np.asarray(samples.inputs), expected_inputs)
    np.testing.assert_array_equal(np.asarray(samples.target), [row[1] for row in rows])
    np.testing.assert_array_equal(np.asarray(samples.target_symbols), [row[2] for row in rows])


@pytest.mark.parametrize("bits, servers, inputs", [*SPECS, (8, 8, 4), (16, 4, 4)])
@pytest.mark.parametrize("pad", [0, 2])
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
@given(pad=st.integers(1, 6), index=st.integers(0, 10**9))
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


def test_it_is_a_value_and_refuses_bad_levels():
    grid = make_dataset_spec(8, 4)
    assert make_padded_grid(grid, 2) == make_padded_grid(grid, 2)
    assert hash(make_padded_grid(grid, 2)) == hash(make_padded_grid(grid, 2))
    assert make_padded_grid(grid, 2) != make_padded_grid(grid, 1)
    assert make_padded_grid(grid, 3).bits == 8
    with pytest.raises(ValueError, match="pad_levels"):
        make_padded_grid(grid, -1)
    with pytest.raises(ValueError, match="pad_levels"):
        make_padded_grid(grid, 1.5)
    with pytest.raises(ValueError, match="overflow int32"):
        make_padded_grid(make_dataset_spec(16, 4), 10**6)


def test_the_experiment_trains_on_the_padded_grid_and_judges_the_real_one(tmp_path, capsys):
    config = TrainConfig.for_scenario(
        "8b4s",
        approx="none",
        epochs=2,
        steps_per_epoch=5,
        checkpoint_every=1,
        finish_rounds=1,
        refit_iterations=2,
    )
    run_dir = tmp_path / "run"
    record = padded_grid.train_padded(config, run_dir, pad_levels=1, progress=False)
    run = load_run(run_dir, dataset=make_padded_grid(make_dataset_spec(8, 4), 1))
    assert run.epoch == 2
    real = evaluate_exhaustive(run.apply_fn, run.params, make_dataset_spec(8, 4))
    assert record["wrong_after_training"] == real.total - real.correct > 0
    assert record["wrong_padded"] == record["wrong_after_training"] + record["wrong_virtual"]
    assert (record["padded_size"], record["grid_size"]) == (13**3 * 15, 13**4)
    assert record["wrong_after"] <= record["wrong_after_finish"] <= record["wrong_after_training"]
    assert "refit_seconds" in record
    # Resuming the finished run trains nothing more and gives the same numbers.
    again = padded_grid.train_padded(config, run_dir, pad_levels=1, progress=False)
    for key in ("wrong_padded", "wrong_after_training", "wrong_after_finish", "wrong_after"):
        assert again[key] == record[key]


def test_the_command_line_writes_strict_json_and_fails_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--scenario", "8b4s", "--pad-levels", "2", "--approx", "none", "--epochs", "1"]
    args += ["--steps-per-epoch", "3", "--run-dir", str(tmp_path / "run"), "--out", str(out)]
    padded_grid.main([*args, "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "8b4s-pad2-seed0.json").read_text())
    assert printed["pad_levels"] == 2 and printed["epochs"] == 1
    with pytest.raises(SystemExit) as exit_info:
        padded_grid.main(["--scenario", "no-such", "--out", str(out)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.count("\n") == 1
