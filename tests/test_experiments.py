"""Smoke tests of experiments/table1.py and table2.py on tiny budgets (in-process)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import common
import table1
import table2
from optinc_jax.learning.train import TrainConfig
from optinc_jax.scenarios import SCENARIOS, make_scenario, register_scenario

ROW_FIELDS = {
    "bits",
    "servers",
    "layers",
    "approx",
    "area_ratio",
    "paper_area_ratio_percent",
    "accuracy",
    "paper_accuracy_percent",
    "epochs",
    "train_seconds",
    "error_histogram",
    "error_shares",
    "budget",
}


@pytest.fixture
def tiny_scenario():
    # 8 weight matrices like 16b4s, so every Table II selection applies; 49 samples.
    register_scenario(
        make_scenario("tiny-exp", bits=4, servers=2, layers=(2,) + (8,) * 7 + (2,), inputs=2),
        overwrite=True,
    )
    yield "tiny-exp"
    del SCENARIOS["tiny-exp"]


def test_table_rows_match_the_paper():
    assert [row.name for row in table1.ROWS] == [
        f"{s}-{kind}" for s in ("8b4s", "8b8s", "8b16s", "16b4s") for kind in ("none", "approx")
    ]
    assert [row.paper_area_percent for row in table1.ROWS[1::2]] == [39.3, 40.9, 40.4, 49.3]
    assert [row.paper_area_percent for row in table2.ROWS] == [49.3, 47.9, 47.4, 43.7, 42.2]
    assert [row.paper_accuracy_percent for row in table2.ROWS] == [
        100.0,
        99.99986,
        99.99999,
        99.98891,
        99.99936,
    ]


def test_quick_budget_caps_large_datasets_only():
    quick = common.ExperimentConfig(quick=True)
    small, _ = common.row_config(table1.ROWS[1], quick)
    large, budget = common.row_config(table1.ROWS[7], quick)
    assert small == TrainConfig(scenario="8b4s")  # the default config in full
    assert (large.epochs, large.steps_per_epoch, large.eval_every) == (20, 100, 20)
    assert "quick" in budget
    full, _ = common.row_config(table1.ROWS[7], common.ExperimentConfig())
    assert full.steps_per_epoch == common.FULL_STEPS


def test_error_shares():
    assert common.error_shares({"1024": 3, "-12": 1}) == {"1024": 0.75, "-12": 0.25}
    assert common.error_shares({}) == {}


def test_unknown_row_is_rejected():
    with pytest.raises(ValueError, match="unknown rows"):
        common.select_rows(table1.ROWS, ["8b4s-nope"])


def test_table1_one_row(tmp_path):
    config = common.ExperimentConfig(
        rows=("8b4s-approx",), epochs=1, steps_per_epoch=2, progress=False
    )
    rows = table1.run(config, tmp_path)
    document = json.loads((tmp_path / "table1.json").read_text())
    assert document == json.loads(json.dumps(rows))
    (row,) = document
    assert ROW_FIELDS <= row.keys()
    assert (row["bits"], row["servers"], row["approx"], row["epochs"]) == (
        8,
        4,
        [1, 2, 3, 4, 5, 6],
        1,
    )
    assert row["layers"] == "4-64-128-256-128-64-4"
    assert row["paper_area_ratio_percent"] == 39.3
    assert abs(100 * row["area_ratio"] - 39.3) < 0.5
    assert row["total"] == 28561
    wrong = row["total"] - row["correct"]
    assert sum(row["error_histogram"].values()) == wrong
    assert (tmp_path / "8b4s-approx" / "result.json").exists()
    markdown = (tmp_path / "table1.md").read_text()
    assert (tmp_path / "table1.png").stat().st_size > 10_000
    assert "| 8b4s-approx | 8 | 4 | 4-64-128-256-128-64-4 | 1-6 |" in markdown
    assert "39.3 %" in markdown and "smoke" in markdown
    # A second run with the same config reuses the finished row instead of training again.
    again = table1.run(config, tmp_path)
    assert again[0]["train_seconds"] == row["train_seconds"]


def test_table2_two_rows_on_a_tiny_scenario(tmp_path, tiny_scenario):
    config = common.ExperimentConfig(
        rows=("16b4s-4-8", "16b4s-3-7"),
        epochs=1,
        steps_per_epoch=2,
        scenario=tiny_scenario,
        progress=False,
    )
    rows = table2.run(config, tmp_path)
    assert [row["approx"] for row in rows] == [[4, 5, 6, 7, 8], [3, 4, 5, 6, 7]]
    for row in rows:
        assert ROW_FIELDS <= row.keys()
        assert row["total"] == 49
        if row["correct"] < row["total"]:
            assert sum(row["error_shares"].values()) == pytest.approx(1.0)
    assert [row["paper_errors"] for row in rows] == ["1024 (100 %)", "12 (3.5 %)"]
    markdown = (tmp_path / "table2.md").read_text()
    assert markdown.count("| 16b4s-") == 2
    assert "99.99999 %" in markdown and "1024 (100 %)" in markdown
