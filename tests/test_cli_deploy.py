"""`optinc deploy`, `verify` and `robustness` on a short real run."""

import json

from click.testing import CliRunner

from optinc_jax.cli import main


def test_deploy_verify_robustness(tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--epochs", "1", "--steps-per-epoch", "5", "--quiet"]
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
