"""Where a benchmark ran, as every benchmark's JSON records it (benchmarks/__init__.py)."""

import json

import optinc_jax
from benchmarks import cpu_model, machine_environment


def test_the_cpu_model_is_the_package_s():
    # one copy: the benchmarks re-export the function result.json uses
    assert cpu_model is optinc_jax.cpu_model


def test_machine_environment_is_the_run_record_plus_the_load(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    environment = machine_environment()
    load = environment.pop("load_average_1min")
    assert load >= 0 and environment == optinc_jax.machine_description()
    assert environment["OPENBLAS_NUM_THREADS"] == "1" and environment["cpu_model"] == cpu_model()
    # strict JSON, as every benchmark writes it
    document = {**environment, "load_average_1min": load}
    assert json.loads(json.dumps(document, allow_nan=False)) == document
