"""experiments.refit_runs: the refit of stored runs, recorded in strict JSON."""

import json

from experiments import refit_runs
from optinc_jax import TrainConfig, evaluate_exhaustive, load_run, train_onn


def _short_run(workdir, approx):
    config = TrainConfig(
        scenario="8b4s", approx=approx, epochs=1, steps_per_epoch=5, checkpoint_every=1
    )
    return train_onn(config, workdir, progress=False)


def test_refits_a_stored_run_and_skips_an_approximated_last_matrix(tmp_path, capsys):
    free = _short_run(tmp_path / "free", "none")
    _short_run(tmp_path / "approx", None)  # 8b4s approximates every matrix
    out = tmp_path / "out"
    refit_runs.main(
        [
            f"free={tmp_path / 'free'}",
            f"approx={tmp_path / 'approx'}",
            *("--iterations", "3", "--out", str(out), "--json"),
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert document == json.loads((out / "refit_runs.json").read_text())
    record = document["runs"]["free"]
    assert record["wrong_before"] == free.evaluation.total - free.evaluation.correct
    assert record["wrong_after"] < record["wrong_before"]
    assert all(
        a <= b
        for a, b in zip(record["wrong_symbols_after"], record["wrong_symbols_before"], strict=True)
    )
    assert document["runs"]["approx"]["status"] == "skipped"
    # The stored run itself is not changed.
    loaded = load_run(tmp_path / "free")
    again = evaluate_exhaustive(loaded.apply_fn, loaded.params, loaded.dataset)
    assert again.correct == free.evaluation.correct


def test_finishes_every_run_before_the_refit_and_draws_the_figure(tmp_path, capsys):
    _short_run(tmp_path / "free", "none")
    _short_run(tmp_path / "approx", None)
    out = tmp_path / "out"
    refit_runs.main(
        [
            f"free={tmp_path / 'free'}",
            f"approx={tmp_path / 'approx'}",
            *("--iterations", "3", "--finish-rounds", "2", "--finish-learning-rate", "1e-3"),
            *("--out", str(out), "--json"),
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert document["finish_rounds"] == 2
    free, approx = document["runs"]["free"], document["runs"]["approx"]
    assert (free["status"], approx["status"]) == ("refit", "finished")
    for record in (free, approx):
        finish = record["finish"]
        assert len(finish["wrong_by_round"]) <= 3
        assert finish["wrong_before"] == record["wrong_before"]
        assert record["wrong_after_finish"] == min(finish["wrong_by_round"])
        assert record["wrong_after_finish"] <= record["wrong_before"]
    # The refit starts from the finished network and never makes it worse; an approximated
    # last matrix is not refit, so the finished network is the result.
    assert free["wrong_after"] <= free["wrong_after_finish"]
    assert approx["wrong_after"] == approx["wrong_after_finish"]
    assert "wrong_symbols_after" not in approx
    assert (out / "refit_runs.png").stat().st_size > 10_000


def test_a_balanced_finishing_is_passed_through_and_recorded(tmp_path, capsys):
    _short_run(tmp_path / "free", "none")
    common = ["--iterations", "1", "--finish-rounds", "2", "--finish-learning-rate", "1e-3"]
    documents = {}
    for name, extra in (("plain", []), ("balanced", ["--finish-balance"])):
        refit_runs.main(
            [f"free={tmp_path / 'free'}", *common, *extra, "--out", str(tmp_path / name), "--json"]
        )
        documents[name] = json.loads(capsys.readouterr().out)
    assert not documents["plain"]["finish_balance"] and documents["balanced"]["finish_balance"]
    plain, balanced = (documents[name]["runs"]["free"]["finish"] for name in documents)
    assert plain["wrong_before"] == balanced["wrong_before"]
    assert plain["wrong_by_round"] != balanced["wrong_by_round"]


def test_a_backtracking_finishing_is_passed_through_and_recorded(tmp_path, capsys):
    _short_run(tmp_path / "free", "none")
    common = ["--iterations", "1", "--finish-rounds", "3", "--finish-learning-rate", "0.3"]
    documents = {}
    for name, extra in (("plain", []), ("backtracked", ["--finish-backtrack", "0.1"])):
        refit_runs.main(
            [f"free={tmp_path / 'free'}", *common, *extra, "--out", str(tmp_path / name), "--json"]
        )
        documents[name] = json.loads(capsys.readouterr().out)
    assert documents["plain"]["finish_backtrack"] == 0.0
    assert documents["backtracked"]["finish_backtrack"] == 0.1
    plain, backtracked = (documents[name]["runs"]["free"]["finish"] for name in documents)
    assert plain["learning_rate_by_round"] == [0.3] * 3 and plain["hinge_by_round"] == []
    assert len(backtracked["hinge_by_round"]) == 3
    assert backtracked["learning_rate_by_round"] != plain["learning_rate_by_round"]


def test_kinks_are_inserted_before_the_finishing_and_recorded(tmp_path, capsys):
    _short_run(tmp_path / "free", "none")
    refit_runs.main(
        [
            f"free={tmp_path / 'free'}",
            *("--iterations", "2", "--finish-rounds", "1", "--finish-learning-rate", "1e-3"),
            *("--kinks", "--kink-radius", "0.5", "--out", str(tmp_path / "out"), "--json"),
        ]
    )
    document = json.loads(capsys.readouterr().out)
    assert (document["kinks"], document["kink_radius"]) == (True, 0.5)
    record = document["runs"]["free"]
    kinks = record["kinks"]
    # The insertion changes no output: the finishing starts from the same count.
    assert kinks["wrong_before"] == record["wrong_before"] == record["finish"]["wrong_before"]
    served = len(kinks["thresholds"])
    assert served == min(kinks["dead_units"], served + len(kinks["skipped"]))
    assert len(kinks["probe_errors"]) == len(kinks["misplaced"]) == served
    assert record["wrong_after"] <= record["wrong_before"]
