"""experiments/recipe_sweep.py on tiny runs: every variant trained with its changes."""

import json
import math

import pytest

from experiments import recipe_sweep
from optinc_jax import make_scenario, register_scenario

register_scenario(
    make_scenario("tiny-sweep", bits=4, servers=2, layers=(2, 8, 8, 2), approx=(2,), inputs=2),
    overwrite=True,
    training={"epochs": 2, "batch_size": 4, "switch_epoch": 1},
)


def test_parse_variant():
    assert recipe_sweep.parse_variant('a-1={"seed": 3}') == ("a-1", {"seed": 3})
    for bad in ('{"seed": 3}', "a/b={}", "a=[1]", "a={seed}"):
        with pytest.raises(ValueError, match="variant"):
            recipe_sweep.parse_variant(bad)


def test_every_variant_trains_with_its_changes(tmp_path):
    variants = {"base": {}, "seed1": {"seed": 1, "epochs": 3}}
    summary = recipe_sweep.run("tiny-sweep", variants, tmp_path)
    assert json.loads((tmp_path / "recipe_sweep.json").read_text()) == summary
    assert (tmp_path / "recipe_sweep.png").stat().st_size > 0
    base, seed1 = summary["variants"]
    assert json.loads((tmp_path / "seed1.json").read_text()) == seed1
    assert (base["config"]["seed"], base["config"]["epochs"]) == (0, 2)
    assert (seed1["config"]["seed"], seed1["config"]["epochs"], seed1["changes"]) == (
        1,
        3,
        {"seed": 1, "epochs": 3},
    )
    for report, epochs in ((base, 2), (seed1, 3)):
        assert report["total"] == 7**2  # 4-bit, 2 servers: 7 levels per input, 2 inputs
        stopped_early = report["stopped_by"] == "100 %"
        assert stopped_early or (
            report["stopped_by"] == "last epoch" and report["epochs"] == epochs
        )
        assert len(report["epoch_end_seconds"]) == report["epochs"]
        assert report["eval_epoch"] == list(range(1, report["epochs"] + 1))
        assert report["wrong"] == report["total"] - report["correct"]
        assert math.isclose(report["epoch_accuracy"][-1], report["accuracy"])
    # different seeds, different runs
    assert (base["epoch_accuracy"][0], base["min_margin"][0]) != (
        seed1["epoch_accuracy"][0],
        seed1["min_margin"][0],
    )


def test_time_limit_stops_after_an_epoch(tmp_path, capsys):
    recipe_sweep.main(
        [
            "--scenario",
            "tiny-sweep",
            "--variant",
            'long={"epochs": 50, "switch_epoch": 30}',
            "--minutes",
            "1e-9",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    (report,) = json.loads(capsys.readouterr().out)["variants"]
    assert report["stopped_by"] == "time limit 0 s" and len(report["epoch_end_seconds"]) == 1
    assert report["wrong"] == round((1 - report["epoch_accuracy"][0]) * 49)
    assert "correct" not in report


# slow (about 24 s, two 8b4s processes): the sequential path is tested above
@pytest.mark.slow
def test_parallel_variants_train_in_their_own_processes(tmp_path):
    variants = {
        name: {"epochs": 1, "steps_per_epoch": 2, "seed": seed} for seed, name in enumerate("ab")
    }
    summary = recipe_sweep.run("8b4s", variants, tmp_path, parallel=2)
    assert [r["name"] for r in summary["variants"]] == ["a", "b"]
    assert all(r["total"] == 28561 and r["epochs"] == 1 for r in summary["variants"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variant", "x={}", "--variant", "x={}"], "share a name"),
        (["--variant", "x={}", "--parallel", "0"], "--parallel"),
        (["--variant", "x=3"], "JSON object"),
        (["--variant", 'x={"epochs": 0}'], "epochs"),
    ],
)
def test_bad_command_lines_exit_with_one_line(tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        recipe_sweep.main([*argv, "--scenario", "tiny-sweep", "--out", str(tmp_path)])
    assert message in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)


def test_seeds_expand_every_variant_and_group_back(tmp_path, capsys):
    assert recipe_sweep.with_seeds({"a": {"epochs": 2}}, [0, 3]) == {
        "a-s0": {"epochs": 2, "seed": 0},
        "a-s3": {"epochs": 2, "seed": 3},
    }
    with pytest.raises(ValueError, match="own seed"):
        recipe_sweep.with_seeds({"a": {"seed": 1}}, [0])
    recipe_sweep.main(
        [
            "--scenario",
            "tiny-sweep",
            "--variant",
            "base={}",
            "--variant",
            'long={"epochs": 3}',
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in summary["variants"]]
    assert names == ["base-s0", "base-s1", "long-s0", "long-s1"]
    base, long = summary["by_changes"]
    assert (base["changes"], base["runs"]) == ({}, ["base-s0", "base-s1"])
    assert (long["changes"], long["runs"]) == ({"epochs": 3}, ["long-s0", "long-s1"])
    for row, reports in ((base, summary["variants"][:2]), (long, summary["variants"][2:])):
        assert row["wrong"] == [r["wrong"] for r in reports]
        assert row["median_wrong"] == sum(row["wrong"]) / 2
        full = [r for r in reports if r["first_full_accuracy"]]
        assert row["reached_100"] == len(full)
        assert row["first_full_epochs"] == [r["first_full_accuracy"]["epoch"] for r in full]


def test_a_diverged_variant_is_recorded_without_a_number(tmp_path):
    variants = {"boom": {"learning_rate": 1e30}, "fine": {}}
    summary = recipe_sweep.run("tiny-sweep", variants, tmp_path)
    boom, fine = summary["variants"]
    assert boom["stopped_by"].startswith("diverged at epoch") and boom["wrong"] is None
    assert "accuracy" not in boom and fine["wrong"] is not None
    assert summary["by_changes"][0]["median_wrong"] is None
    assert (tmp_path / "recipe_sweep.png").stat().st_size > 0


def test_group_runs_by_changes_without_the_seed():
    def report(name, changes, wrong, full=None):
        return {"name": name, "changes": changes, "wrong": wrong, "first_full_accuracy": full}

    rows = recipe_sweep.group_runs(
        [
            report("a-s0", {"epochs": 9, "seed": 0}, 0, {"epoch": 7, "train_seconds": 3.0}),
            report("b-s0", {"seed": 0}, 5),
            report("a-s1", {"seed": 1, "epochs": 9}, 0, {"epoch": 8, "train_seconds": 5.0}),
            report("b-s1", {"seed": 1}, None),  # diverged: no count
            report("a-s2", {"epochs": 9, "seed": 2}, 2),
        ]
    )
    a, b = rows
    assert (a["changes"], a["runs"], a["wrong"]) == (
        {"epochs": 9},
        ["a-s0", "a-s1", "a-s2"],
        [0, 0, 2],
    )
    assert a["median_wrong"] == 0 and a["reached_100"] == 2
    assert (a["first_full_epochs"], a["first_full_seconds"]) == ([7, 8], [3.0, 5.0])
    assert a["median_first_full_seconds"] is None  # a-s2 never reached 100 %
    assert (b["changes"], b["wrong"], b["median_wrong"], b["reached_100"]) == (
        {},
        [5, None],
        None,
        0,
    )
    (only,) = recipe_sweep.group_runs([report("c", {}, 1, {"epoch": 2, "train_seconds": 4.0})])
    assert only["median_first_full_seconds"] == 4.0
