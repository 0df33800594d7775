"""The machine description every benchmark's JSON records (benchmarks/__init__.py)."""

import json
import os

import jax

import optinc_jax
from benchmarks import cpu_model, machine_environment


def test_the_cpu_model_is_the_package_s():
    # one copy: the benchmarks re-export the function result.json uses
    assert cpu_model is optinc_jax.cpu_model


def test_machine_environment_describes_this_process(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    environment = machine_environment()
    assert environment["jax"] == jax.__version__
    assert environment["backend"] == jax.default_backend()
    assert environment["device"] == str(jax.devices()[0])
    assert environment["device_count"] == jax.device_count()
    assert environment["cpu_count"] == os.cpu_count()
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert environment["load_average_1min"] >= 0
    assert environment["cpu_model"] == cpu_model()
    # strict JSON, as every benchmark writes it
    assert json.loads(json.dumps(environment, allow_nan=False)) == environment
