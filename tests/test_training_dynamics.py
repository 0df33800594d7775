"""The training-dynamics experiment on its smoke preset, checked against the runs."""

import json

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


def test_run_dir_argument_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        training_dynamics.main(["--config", "smoke", "--run-dir", f"x={tmp_path}"])
    assert "not a finished run" in capsys.readouterr().err
