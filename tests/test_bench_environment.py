"""The machine description every benchmark's JSON records (benchmarks/__init__.py)."""

import json
import os

import jax

from benchmarks import cpu_model, machine_environment


def test_cpu_model_reads_the_model_name_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"
    )
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"


def test_cpu_model_without_the_line_or_the_file_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.processor", lambda: "")
    empty = tmp_path / "cpuinfo"
    empty.write_text("processor\t: 0\nmodel name\t:   \n")
    assert cpu_model(empty) is None
    assert cpu_model(tmp_path / "absent") is None
    monkeypatch.setattr("platform.processor", lambda: "x86_64")
    assert cpu_model(tmp_path / "absent") == "x86_64"


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
    # strict JSON, as every benchmark writes it
    assert json.loads(json.dumps(environment, allow_nan=False)) == environment
