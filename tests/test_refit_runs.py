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
