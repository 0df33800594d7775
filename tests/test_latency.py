"""The Fig. 6 and Fig. 7(b) models and their commands."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from optinc_jax import LatencyAssumptions, latency_breakdown
from optinc_jax.cli import main
from optinc_jax.network.model_cost import model_cost

ASSUMED = LatencyAssumptions(
    device_tflops=50.0,
    utilization=0.5,
    transceivers=2,
    transceiver_gbps=100.0,
    gradient_bits=16,
    onn_latency_s=1e-6,
    batch_per_server=2,
)


def test_breakdown_is_the_stated_model_on_measured_inputs():
    row = latency_breakdown("llama", 4, ASSUMED)
    cost = model_cost("llama", 2)
    assert row.params == cost.params and row.flops_per_step == cost.flops_per_step
    bandwidth = 2 * 100e9 / 8  # bytes/s
    gradient = cost.params * 16 / 8
    assert row.compute_s == pytest.approx(cost.flops_per_step / (50e12 * 0.5), rel=1e-12)
    assert row.ring_factor == 1.5 and row.optinc_factor == 1 + 8 / (256 * 8)
    assert row.ring_comm_s == pytest.approx(1.5 * gradient / bandwidth, rel=1e-12)
    assert row.optinc_comm_s == pytest.approx(
        (1 + 1 / 256) * gradient / bandwidth + 1e-6, rel=1e-12
    )
    total = row.compute_s + row.ring_comm_s
    assert row.reduction == pytest.approx((row.ring_comm_s - row.optinc_comm_s) / total)
    assert row.paper_reduction == 0.17
    document = json.loads(json.dumps(row.to_json(), allow_nan=False))
    assert document["assumptions"]["transceivers"] == 2


def test_what_the_model_needs_to_reach_the_paper_gives_the_paper_back():
    row = latency_breakdown("llama", 4, ASSUMED)
    # at the reported batch (compute linear in the batch) the reduction is the paper's
    compute = row.compute_s * row.batch_for_paper_reduction / row.batch_per_server
    reduction = (row.ring_comm_s - row.optinc_comm_s) / (compute + row.ring_comm_s)
    assert reduction == pytest.approx(0.17, rel=1e-9)
    # and at the reported link speed
    faster = latency_breakdown(
        "llama", 4, ASSUMED._replace(transceiver_gbps=row.gbps_for_paper_reduction)
    )
    assert faster.reduction == pytest.approx(0.17, rel=1e-9)
    assert latency_breakdown("llama", 8, ASSUMED).paper_reduction is None


def test_more_servers_save_more():
    reductions = [latency_breakdown("llama", n, ASSUMED).reduction for n in (2, 4, 8, 16)]
    assert np.all(np.diff(reductions) > 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"utilization": 0.0}, "utilization"),
        ({"utilization": 1.5}, "utilization"),
        ({"transceivers": 0}, "transceivers"),
        ({"transceiver_gbps": float("nan")}, "transceiver_gbps"),
        ({"batch_per_server": 0}, "batch"),
    ],
)
def test_bad_assumptions_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        latency_breakdown("llama", 4, ASSUMED._replace(**change))
    with pytest.raises(ValueError, match="servers"):
        latency_breakdown("llama", 1, ASSUMED)
    with pytest.raises(ValueError, match="model"):
        latency_breakdown("gpt", 4, ASSUMED)


def test_comm_command_prints_fig_6_from_the_counters(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["comm", "--servers", "4", "8", "16", "--json", "--plot", str(tmp_path / "f.png")]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["servers"], r["ring"], r["optinc"]) for r in rows] == [
        (4, 1.5, 1.0),
        (8, 1.75, 1.0),
        (16, 1.875, 1.0),
    ]
    assert rows[0]["ring_bytes_sent"] == 1.5 * 4 * rows[0]["elements"]
    assert (tmp_path / "f.png").stat().st_size > 10_000
    text = runner.invoke(main, ["comm", "--servers", "4"]).output
    assert "1.500" in text and "byte counters" in text


def test_latency_command(tmp_path):
    runner = CliRunner()
    args = ["latency", "--model", "llama", "--batch-per-server", "2", "--json"]
    result = runner.invoke(main, [*args, "--plot", str(tmp_path / "l.png")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    for key in ("model", "servers", "params", "flops_per_step", "compute_s", "ring_comm_s"):
        assert key in row
    assert row["optinc_comm_s"] < row["ring_comm_s"] and 0 < row["reduction"] < 1
    assert row["assumptions"]["device_tflops"] == 60.0
    assert (tmp_path / "l.png").stat().st_size > 10_000
    text = runner.invoke(main, args[:-1]).output
    assert text.startswith("assumptions: 60.0 TFLOP/s") and "paper: 17 %" in text
    bad = runner.invoke(main, [*args, "--plot", str(tmp_path / "no" / "l.png")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "does not exist" in bad.output
    bad = runner.invoke(main, [*args, "--utilization", "2"])
    assert bad.exit_code == 2 and "utilization" in bad.output and "Traceback" not in bad.output
