"""Smoke test of benchmarks/bench_recipe.py on a tiny scenario (public API only)."""

import pytest

from benchmarks import bench_recipe
from optinc_jax import TrainConfig, make_scenario, register_scenario

register_scenario(
    make_scenario("tiny-recipe", bits=4, servers=2, layers=(2, 8, 8, 2), approx=(2,), inputs=2),
    overwrite=True,
    training={"epochs": 2, "batch_size": 4, "focus_fraction": 0.25},
)


@pytest.mark.slow
def test_epoch_cost_adds_up_its_parts():
    row = bench_recipe.epoch_cost("tiny-recipe")
    assert row["size"] == 49 and row["steps_per_epoch"] == 49 // 4 and row["approx"] == [2]
    parts = (
        row["steps_per_epoch"] * row["step_seconds"]
        + row["epoch_fixed_seconds"]
        + row["size"] * row["score_seconds_per_sample"]
        + row["projection_seconds"]
    )
    # equal up to rounding: the benchmark divides the scoring time in another order
    assert row["epoch_seconds"] == pytest.approx(parts, rel=1e-12)
    assert row["train_flops_per_s"] > 0
    assert row["batch_size"] == 4  # the preset's
    wide = bench_recipe.epoch_cost("tiny-recipe", batch_size=16)
    assert (wide["batch_size"], wide["steps_per_epoch"]) == (16, 49 // 16)


@pytest.mark.slow
def test_time_to_full_accuracy_records_every_run():
    configs = {
        "a": TrainConfig.for_scenario("tiny-recipe"),
        "b": TrainConfig.for_scenario("tiny-recipe", focus_fraction=0.0),
    }
    rows = bench_recipe.time_to_full_accuracy(configs, [0, 1])  # a fresh process per run
    assert [(r["label"], r["seed"]) for r in rows] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    for row in rows:
        assert row["epochs"] == 2 and 0 <= row["accuracy"] <= 1
        assert row["process_seconds"] > row["train_seconds"]  # the child's whole life
        # the recorded first 100 % is consistent with the final accuracy
        assert (row["first_full_accuracy"] is not None) >= (row["accuracy"] == 1.0)
    # the children (which register the scenario from its JSON) train what this process does
    here = bench_recipe.time_to_full_accuracy(configs, [0, 1], fresh_process=False)
    for child, same in zip(rows, here, strict=True):
        assert (child["accuracy"], child["stop_margin"]) == (same["accuracy"], same["stop_margin"])
        assert same["process_seconds"] is None


@pytest.mark.slow
def test_a_revision_runs_that_commits_demo():
    # f620372: make demo before the recipe work; its records lack first_full_accuracy and
    # its runs stopped at the first 100 %, which the row reads from the history.
    (row,) = bench_recipe.time_to_full_accuracy({"old": bench_recipe.Revision("f620372")}, [0])
    assert row["label"] == "old" and row["stop_margin"] is None and row["accuracy"] == 1.0
    first = row["first_full_accuracy"]
    assert first == {"epoch": row["epochs"], "train_seconds": row["train_seconds"]}
    assert 50 <= row["epochs"] <= 130  # its TrainConfig(): 130 epochs, stage 2 from 80


def test_an_unknown_revision_is_one_clear_error():
    with pytest.raises(RuntimeError, match="'no-such-revision': git worktree add failed"):
        bench_recipe.time_to_full_accuracy({"old": bench_recipe.Revision("no-such-revision")}, [0])


def test_the_working_tree_is_the_revision_none():
    # make demo as this tree runs it: no worktree, the repository itself
    with bench_recipe._worktree(None) as path:
        assert path == bench_recipe.REPOSITORY and (path / "src" / "optinc_jax").is_dir()


def test_timed_children_run_without_the_persistent_compilation_cache(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    env = bench_recipe.child_environment()
    assert "JAX_COMPILATION_CACHE_DIR" not in env and env["OPENBLAS_NUM_THREADS"] == "1"
    given = {"JAX_COMPILATION_CACHE_DIR": "/x", "PYTHONPATH": "src"}
    assert bench_recipe.child_environment(given) == {"PYTHONPATH": "src"}
    assert given == {"JAX_COMPILATION_CACHE_DIR": "/x", "PYTHONPATH": "src"}  # a copy


def test_a_run_that_never_reached_full_accuracy_counts_as_the_slowest():
    median = bench_recipe.median_time_to_full
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    # one failure of six: the median moves up to the next run, not out of the report
    assert median([13.3, None, 14.0, 14.3, 14.9, 14.9]) == pytest.approx(14.6)
    assert median([1.0, None, 2.0]) == 2.0
    # the median falls on the failures: no number
    assert median([1.0, None]) is None and median([None, None, 1.0]) is None
    assert median([]) is None
