"""Smoke test of benchmarks/bench_train.py on a tiny scenario (public API only)."""

from benchmarks import bench_train
from optinc_jax import make_scenario

TINY = make_scenario("tiny-bench", bits=4, servers=2, layers=(2, 8, 2), inputs=2)


def test_forward_flops_per_sample():
    assert bench_train.forward_flops_per_sample((2, 8, 2)) == 2 * (16 + 16)


def test_evaluation_throughput_per_chunk_size():
    rows = bench_train.evaluation_throughput(TINY, [8, 64], repeats=1)
    assert [row["chunk_size"] for row in rows] == [8, 64]
    assert all(row["samples_per_s"] > 0 for row in rows)
