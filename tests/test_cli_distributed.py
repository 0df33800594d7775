"""`optinc train-distributed`: one data-parallel run from the command line."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from optinc_jax.cli import main


def _invoke(*args: str):
    return CliRunner().invoke(main, ["train-distributed", *args])


def test_a_short_run_prints_one_strict_json_document(tmp_path):
    result = _invoke(
        "--allreduce", "optinc-ideal", "--steps", "3", "--out", str(tmp_path), "--quiet", "--json"
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout, parse_constant=pytest.fail)
    assert record["status"] == "finished"
    assert (record["model"], record["allreduce"], record["steps"]) == (
        "resnet_small",
        "optinc-ideal",
        3,
    )
    assert record["bits"] == 8 and record["servers"] == 4
    assert record["metric"] == "accuracy" and 0.0 <= record["final"] <= 1.0
    assert math.isfinite(record["final_loss"])
    assert "history" not in record  # the per-step history stays in result.json
    stored = json.loads((tmp_path / "result.json").read_text())
    assert len(stored["history"]["loss"]) == 3
    assert stored["final"] == record["final"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--model", "resnet_huge"), "model must be one of"),
        (("--allreduce", "optinc-inject", "--servers", "8"), "servers must equal"),
        (("--allreduce", "exact", "--bits", "8"), "bits is used only by the optinc"),
    ],
)
def test_bad_options_are_one_line_usage_errors(tmp_path, args, expected):
    result = _invoke(*args, "--steps", "2", "--out", str(tmp_path / "run"), "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], lines
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.slow
def test_sigkilled_distributed_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real SIGKILL of `optinc train-distributed` after a checkpoint, then --resume."""
    optinc = Path(sys.executable).with_name("optinc")
    args = [str(optinc), "train-distributed", "--allreduce", "optinc-ideal", "--steps", "300"]
    args += ["--quiet", "--json"]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "XLA_FLAGS": ""}
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    process = subprocess.Popen(
        [*args, "--out", str(killed_dir)], stdout=subprocess.DEVNULL, env=env
    )
    deadline = time.monotonic() + 600
    checkpoints = killed_dir / "checkpoints"
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "result.json").exists(), "the run finished before it was killed"
    resumed = subprocess.run(
        [*args, "--out", str(killed_dir), "--resume"],
        capture_output=True,
        check=True,
        text=True,
        env=env,
    )
    straight = subprocess.run(
        [*args, "--out", str(straight_dir)], capture_output=True, check=True, text=True, env=env
    )
    resumed_record, straight_record = json.loads(resumed.stdout), json.loads(straight.stdout)
    for key in ("final", "final_loss", "last_loss", "heldout", "steps"):
        assert resumed_record[key] == straight_record[key], key
    histories = [
        json.loads((d / "result.json").read_text())["history"] for d in (killed_dir, straight_dir)
    ]
    assert histories[0] == histories[1]
