"""The cascade experiment on its tiny smoke config: files, strict JSON, measured fields."""

import json

import pytest

from experiments.cascade import main, preset, run


@pytest.mark.slow  # about 35 s: the experiment's code paths; the cascade itself is in test_cascade
def test_smoke_run_writes_the_report_and_a_rerun_reuses_the_levels(tmp_path):
    config = preset("smoke").replace(progress=False)
    document = run(config, tmp_path)
    stored = json.loads((tmp_path / "cascade.json").read_text())  # strict JSON
    assert stored == json.loads(json.dumps(document))
    assert (tmp_path / "cascade.png").stat().st_size > 0
    for key in ("exact_error_rate", "naive_error_rate", "vectors_checked", "level_accuracies"):
        assert key in stored
    assert stored["paper_area_overhead_percent"] == 10.5
    assert stored["level_accuracies"] == [1.0, 1.0]
    assert stored["exact_error_rate"] == 0.0
    assert stored["naive_error_rate"] > 0.0
    assert stored["checks"]["naive_gradients"]["double_floor"]["errors"] == 0
    assert stored["vectors_checked"] == 2 * 4096
    assert stored["deep"]["ideal_chain"]["errors"] == 0
    assert stored["deep"]["trained_tiny"]["errors"] == 0
    assert stored["deep"]["trained_tiny"]["level_accuracies"] == [1.0, 1.0, 1.0]
    assert len(stored["analog_link"][0]["carried_input_deviation"]) == 2
    # The rerun reuses the trained levels (their epochs are unchanged).
    main(["--config", "smoke", "--out", str(tmp_path), "--no-progress", "--vectors", "2048"])
    again = json.loads((tmp_path / "cascade.json").read_text())
    assert again["level_epochs"] == stored["level_epochs"]
    assert again["vectors_checked"] == 2 * 2048
