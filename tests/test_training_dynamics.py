"""The training-dynamics experiment on its smoke preset, checked against the runs."""

import json

import numpy as np
import pytest

from experiments import training_dynamics


@pytest.mark.slow
def test_smoke_run_reports_each_run_and_its_wrong_inputs(tmp_path):
    analyses = training_dynamics.run(training_dynamics.PRESETS["smoke"], tmp_path)
    document = json.loads((tmp_path / "training_dynamics.json").read_text())
    assert [a["label"] for a in document["runs"]] == ["uniform", "focus"]
    assert (tmp_path / "training_dynamics.png").stat().st_size > 20_000
    for analysis in analyses:
        final, history = analysis["final"], analysis["history"]
        # the final count of wrong inputs is the run's own exhaustive evaluation
        assert final["wrong"] == round((1 - analysis["accuracy"]) * analysis["size"])
        assert sum(final["error_values"].values()) == final["wrong"]
        assert final["wrong"] <= final["hard"] <= analysis["size"]
        # every wrong input has at least one wrong symbol, none more than K
        assert max(final["wrong_by_symbol"]) <= final["wrong"] <= sum(final["wrong_by_symbol"])
        assert len(final["wrong_rate_by_target"]) == training_dynamics.TARGET_BINS
        assert all(0 <= rate <= 1 for rate in final["wrong_rate_by_target"])
        # the history holds the diagnostics of every evaluation but the last (full) one
        assert history["scored_epoch"] == [1] and history["eval_epoch"] == [1, 2]
        assert len(history["symbol_errors"]) == len(history["min_margin"]) == 1
        assert final["min_margin"] <= 0.5
        # per input: every grid value appears size / levels times (the grid is a product),
        # and every wrong input is counted once at its value of each input
        spreads = final["wrong_by_input_value"]
        assert len(spreads) == 4
        for spread in spreads:
            assert len(spread["values"]) == 13 and spread["values"] == sorted(spread["values"])
            assert spread["count"] == [analysis["size"] // 13] * 13
            assert sum(spread["wrong"]) == final["wrong"]
            triples = zip(spread["wrong"], spread["count"], spread["rate"], strict=True)
            for wrong, count, rate in triples:
                assert 0 <= wrong <= count and rate == wrong / count
        # the staircase positions, against a brute force over the 8b4s grid
        beside, wraps = final["beside_a_step"], final["at_a_wrap"]
        assert beside["grid_share"] == pytest.approx(GRID_BESIDE_A_STEP)
        by_sum = final["by_sum"]
        assert by_sum["distinct"] == len(np.unique(_TOTAL))
        assert by_sum["all_wrong"] <= by_sum["with_errors"] <= min(final["wrong"], 1 + _TOTAL.max())
        assert 0 <= beside["wrong"] <= final["wrong"]
        assert [w["wrong"] for w in wraps] == final["wrong_by_symbol"]
        for wrap, share in zip(wraps, GRID_AT_A_WRAP, strict=True):
            assert 0 <= wrap["at_wrap"] <= wrap["wrong"]
            assert wrap["grid_share"] == pytest.approx(share)


def _grid_8b4s():
    sums = np.stack(np.meshgrid(*[np.arange(13)] * 4, indexing="ij"), -1).reshape(-1, 4)
    total = sums @ (4 ** np.arange(4))
    return total, total // 4


_TOTAL, _TARGET = _grid_8b4s()
GRID_BESIDE_A_STEP = np.mean((_TOTAL % 4 == 3) | (_TOTAL % 4 == 0))
GRID_AT_A_WRAP = [
    np.mean((_TARGET % 4 ** (k + 1) == 4 ** (k + 1) - 1) | (_TARGET % 4 ** (k + 1) == 0))
    for k in range(4)
]


def test_wrong_inputs_beside_steps_by_hand():
    # 3 servers, 2 inputs of one symbol each: s_m in [0, 9], S = s_0 + 4 s_1, t = floor(S / 3)
    sums = np.stack(np.meshgrid(np.arange(10), np.arange(10), indexing="ij"), -1).reshape(-1, 2)
    target = (sums @ np.array([1, 4])) // 3
    # index 5: S = 20 (beside a step), t = 6; index 37: S = 31 (not), t = 10;
    # index 99: S = 45 (beside), t = 15, the wrap of both symbols
    wrong = np.array([5, 37, 99])
    wrong_symbols = np.array([[True, False], [False, True], [True, True]])
    report = training_dynamics._wrong_beside_steps(
        sums / 3.0, target, wrong, wrong_symbols, servers=3, symbols_per_input=1
    )
    assert report["beside_a_step"]["wrong"] == 2
    assert report["beside_a_step"]["wrong_share"] == pytest.approx(2 / 3)
    totals = [s0 + 4 * s1 for s0 in range(10) for s1 in range(10)]
    assert report["beside_a_step"]["grid_share"] == pytest.approx(
        sum(t % 3 != 1 for t in totals) / 100
    )
    assert [(w["wrong"], w["at_wrap"]) for w in report["at_a_wrap"]] == [(2, 1), (2, 1)]
    # S = 20 has 3 inputs (s_1 = 5, 4, 3), S = 31 two, S = 45 one: that one is all wrong
    by_sum = report["by_sum"]
    assert (by_sum["distinct"], by_sum["with_errors"], by_sum["all_wrong"]) == (46, 3, 1)
    assert by_sum["median_inputs_per_sum_with_errors"] == 2.0
    per_sum = np.bincount(totals)
    assert by_sum["median_inputs_per_sum"] == float(np.median(per_sum[per_sum > 0]))
    per_target = np.bincount(target)
    assert by_sum["median_inputs_per_target"] == float(np.median(per_target[per_target > 0]))
    # targets 6, 10, 15
    assert by_sum["median_inputs_per_target_with_errors"] == float(
        np.median(per_target[[6, 10, 15]])
    )
    assert report["at_a_wrap"][1]["grid_share"] == pytest.approx(
        sum((t // 3) % 16 in (15, 0) for t in totals) / 100
    )


def test_run_dir_argument_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        training_dynamics.main(["--config", "smoke", "--run-dir", f"x={tmp_path}"])
    assert "not a finished run" in capsys.readouterr().err


def test_symbol_periods_against_brute_force():
    # count the wraps of each output symbol along the inputs' weighted sum by brute force
    for bits, servers in ((4, 2), (6, 4), (8, 4), (8, 8)):
        symbols = bits // 2
        grid = np.stack(
            np.meshgrid(*[np.arange(3 * servers + 1)] * symbols, indexing="ij"), axis=-1
        ).reshape(-1, symbols)
        total = grid @ (4 ** np.arange(symbols))
        periods = training_dynamics.symbol_periods(bits, servers)
        for k, expected in enumerate(periods):
            modulus = 4 ** (k + 1) * servers
            weights = np.array([4**j if (4**j) % modulus else 0 for j in range(symbols)])
            span = (grid @ weights).max()
            assert span / modulus == expected
            # the symbol is the sawtooth of that sum (the other inputs add multiples of m)
            symbol = (total // (servers * 4**k)) % 4
            assert np.array_equal(symbol, ((grid @ weights) % modulus) // (servers * 4**k))
