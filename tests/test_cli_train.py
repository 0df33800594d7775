import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from optinc_jax import load_exported, make_scenario, register_scenario
from optinc_jax.cli import main

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
            "--batch-size",
            "4",
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

    again = runner.invoke(
        main, ["train", "--scenario", "cli-4b1s", "--batch-size", "4", "--out", str(run_dir)]
    )
    assert again.exit_code != 0 and "--resume" in again.output and "Traceback" not in again.output


def test_bad_train_arguments_are_one_line_errors(tmp_path):
    runner = CliRunner()
    for args in (["--scenario", "nope"], ["--scenario", "8b4s", "--approx", "9"]):
        result = runner.invoke(main, ["train", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2
        assert "Traceback" not in result.output and "Error:" in result.output
    result = runner.invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "no checkpoint" in result.output


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    """A real SIGKILL of `optinc train` after its first checkpoint, then --resume."""
    optinc = Path(sys.executable).with_name("optinc")
    args = [str(optinc), "train", "--scenario", "8b4s", "--epochs", "25", "--quiet", "--json"]
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    process = subprocess.Popen([*args, "--out", str(killed_dir)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (killed_dir / "checkpoints" / "10").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "result.json").exists()
    resumed = subprocess.run(
        [*args, "--out", str(killed_dir), "--resume"], capture_output=True, check=True, text=True
    )
    straight = subprocess.run(
        [*args, "--out", str(straight_dir)], capture_output=True, check=True, text=True
    )
    resumed_record, straight_record = json.loads(resumed.stdout), json.loads(straight.stdout)
    for key in ("accuracy", "correct", "epochs", "error_histogram"):
        assert resumed_record[key] == straight_record[key]
    assert (
        json.loads((killed_dir / "result.json").read_text())["history"]["loss"]
        == json.loads((straight_dir / "result.json").read_text())["history"]["loss"]
    )


def test_train_focus_option_and_first_full_accuracy_line(tmp_path):
    runner = CliRunner()
    args = ["train", "--scenario", "cli-4b1s", "--epochs", "2", "--batch-size", "4", "--quiet"]
    trained = runner.invoke(main, [*args, "--focus", "0.25", "--out", str(tmp_path / "a")])
    assert trained.exit_code == 0, trained.output
    assert "projected 100 %" in trained.output  # reached (with its epoch) or not reached
    record = json.loads((tmp_path / "a" / "result.json").read_text())
    assert record["config"]["focus_fraction"] == 0.25 and "first_full_accuracy" in record
    bad = runner.invoke(main, [*args, "--focus", "1.5", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "--focus" in bad.output and "Traceback" not in bad.output


def test_train_schedule_options_reach_the_config_and_bad_values_are_one_line(tmp_path):
    runner = CliRunner()
    args = ["train", "--scenario", "cli-4b1s", "--epochs", "2", "--batch-size", "4", "--quiet"]
    options = [
        *("--learning-rate", "0.002", "--switch-epoch", "1"),
        *("--warmup", "0.1", "--symbol-tolerance", "0.2", "--stage2-tolerance", "0.3"),
        *("--condition-until", "1", "--revive-until", "2", "--balance", "0.25"),
        *("--leak-start", "0.2", "--leak-until", "2", "--bias-learning-rate-scale", "0.1"),
        *("--stop-margin", "0.05", "--approx-side", "right"),
        *("--adam-eps", "1e-5", "--stage2-learning-rate-scale", "0.5"),
        *("--stage1-eval-every", "2"),
    ]
    trained = runner.invoke(main, [*args, *options, "--out", str(tmp_path / "a")])
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "a" / "result.json").read_text())["config"]
    assert config["learning_rate"] == 0.002 and config["switch_epoch"] == 1
    assert config["warmup_fraction"] == 0.1 and config["symbol_tolerance"] == 0.2
    assert config["stage2_tolerance"] == 0.3 and config["condition_until"] == 1
    assert config["revive_until"] == 2 and config["balance_fraction"] == 0.25
    assert config["leak_start"] == 0.2 and config["leak_until"] == 2
    assert config["bias_learning_rate_scale"] == 0.1 and config["stop_margin"] == 0.05
    assert config["approx_side"] == "right"
    assert config["adam_eps"] == 1e-5 and config["stage2_learning_rate_scale"] == 0.5
    assert config["stage1_eval_every"] == 2
    for option, value, name in [
        ("--symbol-tolerance", "0.5", "symbol_tolerance"),
        ("--stage2-tolerance", "-0.2", "stage2_tolerance"),
        ("--warmup", "1.0", "warmup_fraction"),
        ("--learning-rate", "nan", "learning_rate"),
        ("--condition-until", "-1", "condition-until"),
        ("--revive-until", "-1", "revive-until"),
        ("--leak-start", "1.0", "leak_start"),
        ("--bias-learning-rate-scale", "0", "bias_learning_rate_scale"),
        ("--balance", "1.0", "balance"),
        ("--stop-margin", "0.6", "stop_margin"),
        ("--approx-side", "up", "approx-side"),
        ("--adam-eps", "0", "adam_eps"),
        ("--stage2-learning-rate-scale", "-1", "stage2_learning_rate_scale"),
        ("--stage1-eval-every", "0", "stage1-eval-every"),
    ]:
        bad = runner.invoke(main, [*args, option, value, "--out", str(tmp_path / "b")])
        assert bad.exit_code != 0 and "Traceback" not in bad.output
        assert name in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output


def test_train_refit_options_reach_the_config_and_an_approximated_last_matrix_is_refused(
    tmp_path,
):
    runner = CliRunner()
    args = ["train", "--scenario", "cli-4b1s", "--epochs", "2", "--batch-size", "4", "--quiet"]
    refit = ["--refit-iterations", "3", "--refit-tolerance", "0.3"]
    trained = runner.invoke(main, [*args, "--approx", "1", *refit, "--out", str(tmp_path / "a")])
    assert trained.exit_code == 0, trained.output
    record = json.loads((tmp_path / "a" / "result.json").read_text())
    assert record["config"]["refit_iterations"] == 3 and record["config"]["refit_tolerance"] == 0.3
    assert record["epochs"] == 2  # not at 100 % before its end: the refit ran
    assert len(record["history"]["refit"]["wrong_symbols_after"]) == 2
    # cli-4b1s approximates both matrices: its last one cannot be re-solved freely.
    bad = runner.invoke(main, [*args, *refit, "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "refit_iterations=3" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_train_finish_options_reach_the_config_and_a_bad_step_is_one_line(tmp_path):
    runner = CliRunner()
    args = ["train", "--scenario", "cli-4b1s", "--epochs", "2", "--batch-size", "4", "--quiet"]
    finish = ["--finish-rounds", "2", "--finish-learning-rate", "1e-3", "--finish-backtrack", "0.5"]
    trained = runner.invoke(main, [*args, *finish, "--out", str(tmp_path / "a"), "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output)["status"] == "finished"
    document = json.loads((tmp_path / "a" / "result.json").read_text())
    assert document["config"]["finish_rounds"] == 2
    assert document["config"]["finish_learning_rate"] == 1e-3
    assert document["config"]["finish_backtrack"] == 0.5
    finish_record = document["history"]["finish"]
    rates, hinges = finish_record["learning_rate_by_round"], finish_record["hinge_by_round"]
    assert len(rates) == len(hinges) == len(finish_record["wrong_by_round"]) - 1
    assert finish_record["wrong_after"] == document["total"] - document["correct"]
    assert finish_record["wrong_after"] <= finish_record["wrong_before"]
    bad = runner.invoke(
        main,
        [
            *args,
            "--finish-rounds",
            "1",
            "--finish-learning-rate",
            "-1",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "finish_learning_rate" in bad.output and len(bad.output.strip().splitlines()) == 1
    backtrack = ["--finish-rounds", "1", "--finish-backtrack", "1"]
    bad = runner.invoke(main, [*args, *backtrack, "--out", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "finish_backtrack" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_train_restore_best_reaches_the_config(tmp_path):
    runner = CliRunner()
    args = ["train", "--scenario", "cli-4b1s", "--epochs", "2", "--batch-size", "4", "--quiet"]
    trained = runner.invoke(main, [*args, "--restore-best", "--out", str(tmp_path), "--json"])
    assert trained.exit_code == 0, trained.output
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["config"]["restore_best"] is True
    assert document["history"]["restore_best"]["best_epoch"] == 1
