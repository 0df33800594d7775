import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from optinc_jax import onn_area
from optinc_jax.cli import emit, main
from optinc_jax.paper import area_rows


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_area():
    result = _invoke("--help")
    assert result.exit_code == 0
    assert "area" in result.stdout


def test_area_json():
    result = _invoke("area", "--layers", "4-64-128-256-128-64-4", "--approx", "1-6", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    data = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert data["area_ratio"] == 41664 / 106260
    assert (data["mzis"], data["mzis_full"]) == (41664, 106260)
    assert data["layers"] == [4, 64, 128, 256, 128, 64, 4]
    assert data["approx"] == [1, 2, 3, 4, 5, 6]
    assert len(data["matrices"]) == 6
    assert data["matrices"][0] == {
        "index": 1,
        "rows": 64,
        "cols": 4,
        "approximated": True,
        "mzis": 160,
        "mzis_full": 2026,
    }


def test_area_json_partial_and_default_approx():
    data = json.loads(_invoke("area", "--layers", "4-64-8", "--approx", "2", "--json").stdout)
    assert [m["approximated"] for m in data["matrices"]] == [False, True]
    assert data["area_ratio"] == onn_area("4-64-8", "2").area_ratio
    data = json.loads(_invoke("area", "--layers", "4-64-8", "--json").stdout)
    assert data["approx"] == []
    assert data["area_ratio"] == 1.0


def test_area_text():
    result = _invoke("area", "--layers", "4-64-128-256-128-64-4", "--approx", "all")
    assert result.exit_code == 0, result.output
    assert "area ratio: 39.21 %" in result.stdout
    assert "41,664" in result.stdout
    assert "106,260" in result.stdout
    assert "approximated matrices: 1-6" in result.stdout
    assert "256 x 128" in result.stdout  # matrix 3 is out x in


def test_paper_json_rows_within_0_15_pp():
    result = _invoke("area", "--paper", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == len(area_rows())
    for row, paper in zip(rows, area_rows(), strict=True):
        assert (row["table"], tuple(row["layers"]), tuple(row["approx"])) == (
            paper.table,
            paper.layers,
            paper.approx,
        )
        assert row["area_ratio"] == onn_area(paper.layers, paper.approx).area_ratio
        assert row["paper_area_ratio"] == pytest.approx(paper.area_ratio_percent / 100)
        assert row["difference_pp"] == pytest.approx(
            100 * row["area_ratio"] - paper.area_ratio_percent
        )
        assert abs(row["difference_pp"]) <= 0.15


def test_paper_text():
    result = _invoke("area", "--paper")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(area_rows())
    assert "39.21%" in lines[1]
    assert "39.3%" in lines[1]
    assert "-0.09" in lines[1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--layers", "4--64"], "'4--64'"),
        (["--layers", "4"], "'4'"),
        (["--layers", "a-b"], "'a-b'"),
        (["--layers", "4-64-4", "--approx", "0-2"], "1..2"),
        (["--layers", "4-64-4", "--approx", "3"], "1..2"),
        (["--layers", "4-64-4", "--approx", "2-1"], "'2-1'"),
        (["--layers", "4-64-4", "--approx", "x", "--json"], "'x'"),
        ([], "--layers"),
        (["--approx", "1"], "--layers"),
        (["--paper", "--layers", "4-4"], "--paper"),
        (["--paper", "--approx", "all"], "--paper"),
    ],
)
def test_malformed_input_is_one_line_error(args, needle):
    result = _invoke("area", *args)
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip("\n").endswith(errors[0])  # the message is the last line
    assert needle in errors[0]


def test_emit_json_or_text(capsys):
    emit({"a": [1, 2]}, True, lambda result: "unused")
    assert json.loads(capsys.readouterr().out) == {"a": [1, 2]}
    emit({"a": [1, 2]}, False, lambda result: f"a has {len(result['a'])} items")
    assert capsys.readouterr().out == "a has 2 items\n"


def test_cli_import_sets_blas_threads_and_skips_jax():
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
    code = (
        "import os, sys, optinc_jax.cli; "
        "print(os.environ['OPENBLAS_NUM_THREADS'], 'jax' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["1", "False", "False"]
