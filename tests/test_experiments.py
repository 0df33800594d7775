"""Smoke tests of the experiments package (Tables I and II, accelerator check), in-process."""

import json

import pytest

from experiments import accelerator_check, configs, table1, table2, tables
from optinc_jax import SCENARIOS, make_scenario, paper
from optinc_jax.learning.config import TrainConfig

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
    "paper_errors",
    "paper_error_shares",
    "budget",
}

# 8 weight matrices like 16b4s, so every Table II selection applies; 49 samples. A value,
# not registered: scenarios are values.
TINY = make_scenario("tiny-exp", bits=4, servers=2, layers=(2,) + (8,) * 7 + (2,), inputs=2)

PAPER_ERROR_TEXTS = [
    "-",
    "? (90 %), ? (10 %)",
    "1024 (100 %)",
    "? (99 %), ? (0.9 %), ? (0.1 %)",
    "? (79.5 %), ? (17 %), 12 (3.5 %)",
]


def test_table_rows_match_the_paper():
    assert [row.name for row in table1.ROWS] == [
        f"{s}-{kind}" for s in ("8b4s", "8b8s", "8b16s", "16b4s") for kind in ("none", "approx")
    ]
    assert [row.paper_area_percent for row in table1.ROWS[1::2]] == [39.3, 40.9, 40.4, 49.3]
    assert [row.paper_area_percent for row in table1.ROWS[::2]] == [100.0] * 4
    assert [row.paper_area_percent for row in table2.ROWS] == [49.3, 47.9, 47.4, 43.7, 42.2]
    assert [row.paper_accuracy_percent for row in table2.ROWS] == [
        100.0,
        99.99986,
        99.99999,
        99.98891,
        99.99936,
    ]
    assert [row.name for row in table2.ROWS] == [
        "16b4s-4-6",
        "16b4s-4-7",
        "16b4s-4-8",
        "16b4s-3-6",
        "16b4s-3-7",
    ]
    # Read from optinc_jax.paper, not typed again.
    assert [row.paper_area_percent for row in table1.ROWS[1::2]] == [
        row.area_ratio_percent for row in paper.TABLE_I
    ]
    assert [row.paper_errors for row in table2.ROWS] == [row.errors for row in paper.TABLE_II]
    # The approximated rows select the paper's matrices.
    for row, paper_row in zip(table1.ROWS[1::2], paper.TABLE_I, strict=True):
        assert TrainConfig(scenario=row.scenario, approx=row.approx).approx_layers() == (
            paper_row.approx
        )
    for row, paper_row in zip(table2.ROWS, paper.TABLE_II, strict=True):
        assert TrainConfig(scenario=row.scenario, approx=row.approx).approx_layers() == (
            paper_row.approx
        )


def test_paper_errors_are_shown_in_full():
    assert [tables.format_paper_errors(row.paper_errors) for row in table2.ROWS] == (
        PAPER_ERROR_TEXTS
    )
    shares = [error.share_percent for row in paper.TABLE_II for error in row.errors]
    assert sum(text.count(" %)") for text in PAPER_ERROR_TEXTS) == len(shares)


def test_presets_load_and_differ_as_documented():
    smoke, quick, full = (configs.table_preset(name) for name in ("smoke", "quick", "full"))
    assert configs.table_preset() == full
    assert (smoke.full_pass_samples, smoke.capped_epochs, smoke.capped_steps_per_epoch) == (
        0,
        1,
        2,
    )
    assert (quick.full_pass_samples, quick.capped_epochs, quick.capped_steps_per_epoch) == (
        65536,
        20,
        100,
    )
    assert (full.full_pass_samples, full.capped_epochs, full.capped_steps_per_epoch) == (
        256000,
        None,
        2000,
    )
    assert (smoke.capped_eval_every, quick.capped_eval_every, full.capped_eval_every) == (
        None,
        None,
        5,
    )
    assert not smoke.progress and quick.progress and full.progress
    check = {name: configs.check_preset(name) for name in ("smoke", "quick", "full")}
    assert (check["full"].train_scenario, check["full"].eval_scenario) == ("8b8s", "16b4s")
    assert check["full"].epochs is None and check["full"].train_minutes == 6.0
    assert (check["quick"].train_scenario, check["quick"].epochs) == ("8b4s", 1)
    assert (check["smoke"].steps_per_epoch, check["quick"].steps_per_epoch) == (2, 5)
    with pytest.raises(ValueError, match="unknown preset 'slow'; known presets: smoke"):
        configs.table_preset("slow")


def test_quick_budget_caps_large_datasets_only():
    quick = configs.table_preset("quick")
    small, small_budget = tables.row_config(table1.ROWS[1], quick)
    large, budget = tables.row_config(table1.ROWS[7], quick)
    assert small == TrainConfig.for_scenario("8b4s")  # the scenario preset in full
    assert "evaluated every 5 epochs in stage 1, then every epoch" in small_budget
    assert (large.epochs, large.steps_per_epoch, large.eval_every, large.switch_epoch) == (
        20,
        100,
        20,
        12,
    )
    assert budget.startswith("quick") and "one exhaustive evaluation at the end" in budget
    # a cut schedule drops the preset's finishing (most of the grid would be hard)
    preset_8b8s = TrainConfig.for_scenario("8b8s")
    assert preset_8b8s.finish_rounds > 0
    cut_8b8s, cut_budget = tables.row_config(table1.ROWS[3], quick)
    assert cut_8b8s.resolved_scenario().name == "8b8s" and cut_8b8s.epochs == 20
    assert cut_8b8s.finish_rounds == 0 and cut_budget.endswith(
        "without the preset's hinge finishing, trained on the grid padded by 4 levels per side"
    )
    assert cut_8b8s.pad_levels == preset_8b8s.pad_levels == 4
    full_8b8s, full_budget = tables.row_config(table1.ROWS[3], configs.table_preset("full"))
    assert full_8b8s.finish_rounds == preset_8b8s.finish_rounds
    assert "finishing" not in full_budget
    full, budget = tables.row_config(table1.ROWS[7], configs.table_preset("full"))
    assert full.steps_per_epoch == 2000
    preset = TrainConfig.for_scenario("16b4s")  # full keeps the preset's schedule
    assert (full.epochs, full.eval_every, full.switch_epoch) == (
        preset.epochs,
        5,
        preset.switch_epoch,
    )
    assert full.focus_fraction == preset.focus_fraction and full.checkpoint_every == 5
    assert "evaluated every 5 epochs" in budget
    # 8b8s (390,625 samples) is capped by full, 8b4s (28,561) is not.
    assert tables.row_config(table1.ROWS[1], configs.table_preset("full"))[0] == small
    smoke, budget = tables.row_config(table1.ROWS[1], configs.table_preset("smoke"))
    assert (smoke.epochs, smoke.steps_per_epoch, smoke.eval_every, smoke.switch_epoch) == (
        1,
        2,
        1,
        1,
    )
    overridden, budget = tables.row_config(
        table1.ROWS[7], quick.replace(epochs=3, steps_per_epoch=4)
    )
    assert (overridden.epochs, overridden.steps_per_epoch, overridden.eval_every) == (3, 4, 3)
    assert budget == "quick, overridden: 3 epochs x 4 steps"
    assert tables.row_config(table1.ROWS[3], quick.replace(epochs=3))[0].finish_rounds == 0
    # other steps per epoch over the preset's epochs cut no epoch: the finishing stays
    full_budget_steps = configs.table_preset("full").replace(steps_per_epoch=4)
    more_steps = tables.row_config(table1.ROWS[3], full_budget_steps)[0]
    assert more_steps.epochs == preset_8b8s.epochs
    assert more_steps.finish_rounds == preset_8b8s.finish_rounds


def test_error_shares():
    assert tables.error_shares({"1024": 3, "-12": 1}) == {"1024": 0.75, "-12": 0.25}
    assert tables.error_shares({}) == {}


def test_unknown_row_is_rejected(capsys):
    with pytest.raises(ValueError, match="unknown rows"):
        tables.select_rows(table1.ROWS, ["8b4s-nope"])
    with pytest.raises(SystemExit) as exit_info:
        table1.main(["--rows", "8b4s-nope", "--config", "smoke"])
    assert exit_info.value.code == 2
    assert "known rows: 8b4s-none" in capsys.readouterr().err


@pytest.mark.parametrize("module", [table1, table2, accelerator_check])
def test_main_help_runs_in_process(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"python -m experiments.{module.__name__.split('.')[-1]}" in out
    assert "--config {smoke,quick,full}" in out and "--quick" in out


def test_command_line_selects_the_preset_and_overrides():
    config, out = tables.parse_table_args("table1", "", table1.ROWS, ["--quick"])
    assert config == configs.table_preset("quick") and str(out) == "runs/table1"
    assert tables.parse_table_args("table1", "", table1.ROWS, ["--config", "quick"])[0] == config
    config, out = tables.parse_table_args(
        "table2",
        "",
        table2.ROWS,
        ["--rows", "16b4s-4-6", "--epochs", "2", "--steps-per-epoch", "3", "--out", "x"],
    )
    assert config == configs.table_preset("full").replace(
        rows=("16b4s-4-6",), epochs=2, steps_per_epoch=3
    )
    assert str(out) == "x"
    with pytest.raises(SystemExit):
        tables.parse_table_args("table1", "", table1.ROWS, ["--quick", "--config", "full"])
    with pytest.raises(SystemExit):
        tables.parse_table_args("table1", "", table1.ROWS, ["--epochs", "0"])


def test_table1_one_row(tmp_path, capsys):
    config = configs.table_preset("smoke").replace(rows=("8b4s-approx",))
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
    # So does main, in-process, and it prints the markdown.
    table1.main(["--config", "smoke", "--rows", "8b4s-approx", "--out", str(tmp_path)])
    assert "| 8b4s-approx | 8 | 4 |" in capsys.readouterr().out
    rerun = json.loads((tmp_path / "table1.json").read_text())
    assert rerun[0]["train_seconds"] == row["train_seconds"]


def test_table2_on_a_tiny_scenario(tmp_path):
    config = configs.table_preset("smoke").replace(scenario=TINY)
    rows = table2.run(config, tmp_path)
    assert "tiny-exp" not in SCENARIOS  # the value was enough
    assert [row["approx"] for row in rows] == [
        [4, 5, 6],
        [4, 5, 6, 7],
        [4, 5, 6, 7, 8],
        [3, 4, 5, 6],
        [3, 4, 5, 6, 7],
    ]
    for row in rows:
        assert ROW_FIELDS <= row.keys()
        assert row["total"] == 49 and row["scenario"] == "tiny-exp"
        if row["correct"] < row["total"]:
            assert sum(row["error_shares"].values()) == pytest.approx(1.0)
    assert [row["paper_errors"] for row in rows] == PAPER_ERROR_TEXTS
    assert rows[4]["paper_error_shares"] == [
        {"value": None, "share_percent": 79.5},
        {"value": None, "share_percent": 17.0},
        {"value": 12, "share_percent": 3.5},
    ]
    markdown = (tmp_path / "table2.md").read_text()
    assert markdown.count("| 16b4s-") == 5
    assert "99.99999 %" in markdown and "1024 (100 %)" in markdown
    for text in PAPER_ERROR_TEXTS[1:]:  # every share of the paper's error column
        assert f"| {text} |" in markdown


def test_accelerator_check_smoke(tmp_path, capsys):
    report = accelerator_check.run(configs.check_preset("smoke"), tmp_path)
    assert json.loads((tmp_path / "accelerator_check.json").read_text()) == report
    training, evaluation = report["training"], report["evaluation"]
    assert (training["scenario"], training["epochs"], training["total"]) == ("8b4s", 1, 28561)
    assert training["stopped_by"] in ("100 %", "epoch budget")
    # the scenario's preset (8b4s: a stage-2 dead zone), every epoch timed and evaluated
    assert training["config"]["stage2_tolerance"] == 0.3
    assert len(training["epoch_end_seconds"]) == len(training["epoch_accuracy"]) == 1
    assert training["epoch_accuracy"][0] == training["accuracy"]
    assert (evaluation["scenario"], evaluation["samples"], evaluation["devices"]) == (
        "8b4s",
        28561,
        1,
    )
    # A time limit stops training after the first epoch and evaluates its checkpoint.
    accelerator_check.main(
        ["--config", "smoke", "--epochs", "3", "--train-minutes", "0", "--out", str(tmp_path / "t")]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["training"]["stopped_by"] == "time limit 0 s"
    assert printed["training"]["epochs"] == 1 and printed["training"]["total"] == 28561
    assert printed["training"]["seconds_per_epoch_after_first"] is None  # one epoch only
    assert printed["preset"] == "smoke"
