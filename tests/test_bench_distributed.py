"""benchmarks/bench_distributed.py on a tiny budget: every all-reduce timed, strict JSON."""

import json
import math

import pytest

from benchmarks import bench_distributed
from optinc_jax import ALLREDUCES


@pytest.mark.slow
def test_every_allreduce_is_timed_against_exact(tmp_path):
    report = bench_distributed.run(tmp_path, steps=2, repeats=1)
    rows = {row["allreduce"]: row for row in report["rows"]}
    assert tuple(rows) == ALLREDUCES
    assert rows["exact"]["time_ratio_vs_exact"] == 1.0
    assert rows["exact"]["overhead_ms_per_step"] == 0.0
    assert (rows["optinc-ideal"]["bits"], rows["optinc-inject"]["bits"]) == (8, 16)
    for row in rows.values():
        assert row["steps_per_second"] == pytest.approx(1.0 / row["seconds_per_step"])
        assert math.isfinite(row["final_loss"])
    stored = json.loads(
        (tmp_path / "bench_distributed.json").read_text(), parse_constant=pytest.fail
    )
    assert stored["rows"] == report["rows"]
    assert (tmp_path / "bench_distributed.png").stat().st_size > 0
