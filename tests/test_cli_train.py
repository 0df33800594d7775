import json

from click.testing import CliRunner

from optinc_jax.cli import main
from optinc_jax.export import load_exported
from optinc_jax.scenarios import make_scenario, register_scenario

register_scenario(
    make_scenario("cli-4b1s", bits=4, servers=1, layers=(2, 16, 2), approx=(1, 2), inputs=2),
    overwrite=True,
)


def test_train_evaluate_export_json(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    trained = runner.invoke(
        main,
        [
            "train",
            "--scenario",
            "cli-4b1s",
            "--out",
            str(run_dir),
            "--epochs",
            "3",
            "--quiet",
            "--json",
        ],
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads(trained.stdout)
    assert record["scenario"] == "cli-4b1s" and record["epochs"] <= 3
    assert record["total"] == 16 and 0 <= record["accuracy"] <= 1
    assert record["config"]["epochs"] == 3 and "history" not in record

    evaluated = runner.invoke(main, ["evaluate", str(run_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout)
    assert again["correct"] == record["correct"] and again["epochs"] == record["epochs"]
    assert again["error_histogram"] == record["error_histogram"]

    exported = runner.invoke(main, ["export", str(run_dir), "--out", str(tmp_path / "w.npz")])
    assert exported.exit_code == 0, exported.output
    arrays = load_exported(tmp_path / "w.npz")
    assert arrays["weights_0"].shape == (16, 2) and arrays["weights_1"].shape == (2, 16)

    again = runner.invoke(main, ["train", "--scenario", "cli-4b1s", "--out", str(run_dir)])
    assert again.exit_code != 0 and "--resume" in again.output and "Traceback" not in again.output


def test_bad_train_arguments_are_one_line_errors(tmp_path):
    runner = CliRunner()
    for args in (["--scenario", "nope"], ["--scenario", "8b4s", "--approx", "9"]):
        result = runner.invoke(main, ["train", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2
        assert "Traceback" not in result.output and "Error:" in result.output
    result = runner.invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "no checkpoint" in result.output
