"""Smoke test of benchmarks/bench_scale.py on a tiny scenario (public API only)."""

import jax

from benchmarks import bench_scale
from optinc_jax import make_scenario

TINY = make_scenario("tiny-bench", bits=4, servers=2, layers=(2, 8, 8, 2), approx=(2,), inputs=2)


def test_train_speed_times_capped_epochs_and_extrapolates():
    row = bench_scale.train_speed(TINY, None, steps=2, epochs=1)
    assert (row["scenario"], row["approx"], row["timed_steps"]) == ("tiny-bench", [2], 2)
    assert row["full_epoch_steps"] == 1  # 49 samples, batch 128
    assert row["extrapolated_seconds_per_epoch"] == row["seconds_per_step"] > 0


def test_eval_scaling_over_devices():
    counts = [n for n in (1, 2) if n <= jax.device_count()]
    rows = bench_scale.eval_scaling(TINY, 16, counts)
    assert [row["devices"] for row in rows] == counts
    assert all(row["samples_per_s"] > 0 for row in rows)


def test_eval_memory_runs_its_children():
    result = bench_scale.eval_memory(TINY, 1, 16)
    assert (result["small"]["samples"], result["full"]["samples"]) == (16, 49)
    assert isinstance(result["memory_bound_held"], bool)
