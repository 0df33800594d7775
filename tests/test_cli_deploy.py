"""`optinc deploy`, `verify` and `robustness` on a short real run."""

import json

import pytest
from click.testing import CliRunner

from optinc_jax import make_scenario, register_scenario
from optinc_jax.cli import main

# A small scenario keeps the commands' test short: 4-bit, 2 servers, two kinds of stage.
register_scenario(
    make_scenario(
        "cli-deploy-4b2s", bits=4, servers=2, layers=(2, 32, 32, 2), approx=(2,), inputs=2
    ),
    overwrite=True,
)


def test_deploy_verify_robustness(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--epochs", "1", "--steps-per-epoch", "5", "--quiet"]
    args += ["--scenario", "cli-deploy-4b2s"]
    assert runner.invoke(main, [*args, "--json"]).exit_code == 0
    trained = json.loads((run / "result.json").read_text())
    deployed = runner.invoke(main, ["deploy", str(run), "--out", str(tmp_path / "c.npz"), "--json"])
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.output)["mzis"] == trained["mzis"]
    verified = runner.invoke(main, ["verify", str(tmp_path / "c.npz"), "--json"])
    assert verified.exit_code == 0, verified.output
    record = json.loads(verified.output)
    assert record["correct"] == trained["correct"] and record["max_abs_deviation"] < 1e-3
    swept = runner.invoke(
        main,
        [
            "robustness",
            str(tmp_path / "c.npz"),
            "--model",
            "receiver",
            "--sweep",
            "0:0.2:2",
            "--trials",
            "2",
            "--json",
            "--plot",
            str(tmp_path / "r.png"),
        ],
    )
    assert swept.exit_code == 0, swept.output
    result = json.loads(swept.output)
    assert result["strengths"] == [0.0, 0.2] and result["accuracy_mean"][0] == trained["accuracy"]
    assert (tmp_path / "r.png").stat().st_size > 10_000
    bad = runner.invoke(main, ["robustness", str(tmp_path / "c.npz"), "--sweep", "1:x"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "Traceback" not in bad.output
    bad = runner.invoke(main, ["verify", str(run / "result.json")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1


@pytest.mark.slow  # about 100 s: compiles the phase-level gradient of the 8b4s circuit
def test_finetune_and_train_noise_options(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--epochs", "1", "--steps-per-epoch", "5", "--quiet"]
    trained = runner.invoke(
        main, [*args, "--noise-model", "phase", "--noise-strength", "0.002", "--json"]
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads(trained.stdout)  # progress lines go to stderr
    assert record["accuracy"] < 1.0
    assert record["noise_finetune"]["status"] == "skipped"  # only a 100 % network is tuned
    assert "not at projected 100 %" in record["noise_finetune"]["reason"]
    assert not (run / "circuit_finetuned.npz").exists()
    out = tmp_path / "tuned.npz"
    tuned = runner.invoke(
        main,
        [
            "finetune",
            str(run),
            "--strength",
            "0.002",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "64",
            "--trials",
            "1",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert tuned.exit_code == 0, tuned.output
    result = json.loads(tuned.stdout)
    assert result["ideal_accuracy_before"] == record["accuracy"]
    assert result["selected_epoch"] in (0, 1) and result["history"]["epoch"] == [0, 1]
    assert result["ideal_accuracy_after"] >= result["ideal_accuracy_before"]
    verified = runner.invoke(main, ["verify", str(out), "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["accuracy"] == result["ideal_accuracy_after"]
    bad = runner.invoke(main, [*args[:1], "--out", str(tmp_path / "x"), "--noise-model", "phase"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [
        "Error: --noise-model phase needs --noise-strength"
    ]
    bad = runner.invoke(main, ["finetune", str(run), "--strength", "-1", "--out", str(out)])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "strength" in bad.output


def test_the_cli_offers_every_noise_model():
    from optinc_jax import NOISE_MODELS
    from optinc_jax.cli import NOISE_MODEL_NAMES

    assert sorted(NOISE_MODEL_NAMES) == sorted(NOISE_MODELS)
