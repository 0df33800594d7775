import json

import jax
import numpy as np
import pytest

import optinc_jax
from experiments import robustness
from optinc_jax import (
    deploy,
    load_circuit_or_deploy,
    parse_sweep,
    plot_robustness,
    robustness_sweep,
    trial_counts,
    verify_circuit,
)
from optinc_jax.photonics.circuit import circuit_forward, load_circuit, save_circuit

# A tiny network that trains to 100 % in seconds: three of its matrices are SVD-mapped
# or approximated, so both kinds of stage are deployed.
TINY = optinc_jax.make_scenario(
    "deploy-4b2s", bits=4, servers=2, layers=(2, 32, 32, 32, 2), approx=(1, 3), inputs=2
)
TINY_TRAINING = (
    ("epochs", 200),
    ("batch_size", 8),
    ("switch_epoch", 150),
    ("learning_rate", 1e-2),
    ("checkpoint_every", 200),
)
SMOKE = robustness.preset("smoke").replace(
    scenario=TINY, train_overrides=TINY_TRAINING, progress=False
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("robustness")
    return workdir, robustness.run(SMOKE, workdir)


@pytest.fixture(scope="module")
def circuit(study):
    workdir, _ = study
    return deploy(workdir / "approx")[0]


# ------------------------------------------------------------------- the study


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_study_trains_deploys_verifies_and_compares(study):
    workdir, document = study
    reread = json.loads((workdir / "robustness.json").read_text())
    assert reread == json.loads(json.dumps(document, allow_nan=False))
    for label in ("none", "approx"):
        verify = document["networks"][label]["verify"]
        assert document["networks"][label]["train_accuracy"] == 1.0
        # A 100 % network stays 100 % through the phase-level simulation.
        assert verify["accuracy"] == 1.0 and verify["invalid"] == 0
        assert verify["digital_accuracy"] == 1.0 and verify["max_abs_deviation"] < 1e-4
        assert load_circuit(workdir / f"{label}.circuit.npz").info.approx_layers == (
            () if label == "none" else (1, 3)
        )
    assert set(document["sweeps"]) == {"phase", "receiver"} == set(document["comparison"])
    for model, results in document["sweeps"].items():
        for result in results.values():
            assert result["strengths"][0] == 0 and result["accuracy_mean"][0] == 1.0
            assert len(result["accuracy_trials"]) == 2 and result["trials"] == 2
        assert document["comparison"][model]["more_tolerant"] in {"none", "approx", "tie"}
        assert (workdir / f"robustness_{model}.png").stat().st_size > 10_000
    assert (workdir / "robustness.png").stat().st_size > 10_000
    assert "tolerates more" in document["verdict"] or "Neither" in document["verdict"]
    assert "| phase | rad |" in (workdir / "robustness.md").read_text()


def test_comparison_prefers_the_later_drop_then_the_higher_mean():
    def result(limit, means, strengths=(0.0, 0.1, 0.2)):
        return {"first_below_99": limit, "accuracy_mean": means, "strengths": list(strengths)}

    def winner(a, b):
        return robustness.compare({"a": a, "b": b})["more_tolerant"]

    assert winner(result(0.1, [1]), result(None, [0])) == "b"
    assert winner(result(0.2, [1]), result(0.1, [1])) == "a"
    assert winner(result(0.1, [1, 0.5]), result(0.1, [1, 0.4])) == "a"
    assert winner(result(None, [1]), result(None, [1])) == "tie"
    # DAC sweeps run from many bits to few: a drop at fewer bits is the later one.
    bits = (0, 12, 10, 8)
    assert winner(result(10, [1], bits), result(8, [1], bits)) == "b"


def test_presets_thin_the_standard_sweeps():
    quick = robustness.preset("quick").sweeps()
    assert [s.model for s in quick] == [s.model for s in robustness.STANDARD_SWEEPS]
    for thin, full in zip(quick, robustness.STANDARD_SWEEPS, strict=True):
        assert thin.strengths[0] == full.strengths[0] and thin.strengths[-1] == full.strengths[-1]
    assert [len(s.strengths) for s in SMOKE.sweeps()] == [2, 2]
    with pytest.raises(ValueError, match="preset must be one of"):
        robustness.preset("huge")


# ------------------------------------------------------------------- deploy and verify


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_run_directory_export_and_circuit_file_deploy_alike(study, circuit, tmp_path):
    workdir, _ = study
    run = optinc_jax.load_run(workdir / "approx")
    arrays = optinc_jax.export_arrays(
        run.model, run.params, bits=4, servers=2, approx_layers=run.approx_layers
    )
    weights = optinc_jax.save_exported(tmp_path / "weights.npz", arrays)
    path = save_circuit(tmp_path / "circuit.npz", circuit)
    x = np.random.default_rng(0).uniform(0, 3, size=(32, 2))
    expected = circuit_forward(circuit, x)
    for source in (weights, path, workdir / "approx"):
        np.testing.assert_allclose(
            circuit_forward(load_circuit_or_deploy(source), x), expected, atol=1e-6
        )
    np.testing.assert_allclose(expected, optinc_jax.mlp_forward_numpy(arrays, x), atol=1e-4)


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_verify_reports_json_ready_numbers(circuit):
    report = verify_circuit(circuit)
    json.dumps(report, allow_nan=False)
    assert report["total"] == 49 and report["correct"] == 49 and report["error_histogram"] == {}
    assert [m["kind"] for m in report["mzis_by_matrix"]] == ["blocks", "svd", "blocks", "svd"]
    assert [m["mzis"] for m in report["mzis_by_matrix"]] == [
        optinc_jax.approx_matrix_mzis(32, 2),
        optinc_jax.matrix_mzis(32, 32),
        optinc_jax.approx_matrix_mzis(32, 32),
        optinc_jax.matrix_mzis(2, 32),
    ]
    assert report["mzis"] == optinc_jax.onn_area((2, 32, 32, 32, 2), (1, 3)).mzis
    assert 0 < report["min_decision_margin"] <= 0.5


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_deploy_refuses_missing_sources_and_nonfinite_weights(study, tmp_path):
    workdir, _ = study
    with pytest.raises(ValueError, match="does not exist"):
        deploy(tmp_path / "nothing")
    run = optinc_jax.load_run(workdir / "none")
    good = optinc_jax.export_arrays(run.model, run.params, bits=4, servers=2, approx_layers=())
    path = optinc_jax.save_exported(tmp_path / "nan.npz", good)
    with np.load(path) as data:
        bad = {name: data[name] for name in data.files}
    bad["weights_1"] = bad["weights_1"].copy()
    bad["weights_1"][0, 0] = np.nan
    np.savez(path, **bad)
    with pytest.raises(ValueError, match="NaN or infinite"):
        deploy(path)


# ------------------------------------------------------------------- sweeps


@pytest.mark.slow  # the default suite checks this on test_finetune's network
@pytest.mark.parametrize(("model", "strength"), [("phase", 0.02), ("receiver", 0.2)])
def test_vmapped_sweep_equals_a_python_loop_over_the_same_keys(circuit, model, strength):
    # Two trials, as in the study: the vmapped function is already compiled.
    key = jax.random.key(3)
    result = robustness_sweep(circuit, model, [0.0, strength], 2, key)
    keys = jax.random.split(key, 2)
    loop = [trial_counts(circuit, model, strength, k)[0] / 49 for k in keys]
    assert result["accuracy_trials"] == [[1.0, 1.0], loop]
    assert min(loop) < 1.0  # the noise is strong enough to matter
    assert result["first_below_100"] == strength
    np.testing.assert_allclose(result["accuracy_mean"][1], np.mean(loop))
    np.testing.assert_allclose(result["accuracy_std"][1], np.std(loop))
    json.dumps(result, allow_nan=False)


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_sweep_arguments_are_checked(circuit):
    for kwargs, message in [
        ({"model": "heat"}, "model must be one of"),
        ({"strengths": [-0.1]}, "strength"),
        ({"strengths": []}, "at least one"),
        ({"model": "dac", "strengths": [8.5]}, "whole number"),
        ({"trials": 0}, "trials must be"),
        ({"chunk_size": 0}, "chunk_size must be"),
    ]:
        arguments = {"model": "phase", "strengths": [0.0], "trials": 1, **kwargs}
        chunk = arguments.pop("chunk_size", None)
        with pytest.raises(ValueError, match=message):
            robustness_sweep(
                circuit,
                arguments["model"],
                arguments["strengths"],
                arguments["trials"],
                0,
                chunk_size=chunk,
            )


def test_parse_sweep():
    assert parse_sweep("0:0.05:11") == tuple(round(0.005 * i, 12) for i in range(11))
    assert parse_sweep("16:4:4") == (16.0, 12.0, 8.0, 4.0)
    assert parse_sweep("0.1:0.1:1") == (0.1,)
    for bad, message in [
        ("0:0.05", "start:stop:count"),
        ("a:1:3", "must be numbers"),
        ("0:1:2.5", "count must be an integer"),
        ("0:1:0", "count must be an integer >= 1"),
        ("-1:1:3", "sweep start must be a finite number"),
        ("0:inf:3", "sweep stop must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            parse_sweep(bad)
        assert "\n" not in str(error.value)


@pytest.mark.slow  # the module's study trains and sweeps two networks (~55 s)
def test_plot_robustness(study, tmp_path):
    _, document = study
    results = list(document["sweeps"]["phase"].values())
    path = plot_robustness(results, tmp_path / "phase.png", labels=["none", "approx"])
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="same model"):
        plot_robustness([results[0], document["sweeps"]["receiver"]["none"]], tmp_path / "x.png")
    with pytest.raises(ValueError, match="does not exist"):
        plot_robustness(results, tmp_path / "no" / "x.png")
