"""experiments/noise_finetune.py on its smoke budget: files, strict JSON, measured fields."""

import json

import pytest

from experiments.noise_finetune import preset, run


@pytest.mark.slow  # compiles the phase-level gradient of the 8b4s circuit (about a minute)
def test_smoke_run_writes_both_sweeps_and_the_tuned_circuit(tmp_path):
    config = preset("smoke").replace(
        progress=False, train_overrides=(("epochs", 2), ("steps_per_epoch", 5))
    )
    document = run(config, tmp_path)
    stored = json.loads((tmp_path / "noise_finetune.json").read_text(), parse_constant=pytest.fail)
    assert stored == json.loads(json.dumps(document))
    trained = json.loads((tmp_path / "run" / "result.json").read_text())
    assert stored["verify_before"]["accuracy"] == trained["accuracy"]
    assert stored["sweep_before"]["strengths"] == list(config.strengths)
    assert stored["sweep_after"]["strengths"] == list(config.strengths)
    assert stored["finetune"]["history"]["epoch"] == [0, 1, 2]
    for name in ("circuit.npz", "circuit_finetuned.npz", "noise_finetune.md", "noise_finetune.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert stored["verdict"]
