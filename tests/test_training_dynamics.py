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
