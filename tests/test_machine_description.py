"""What every result.json records about where it ran (optinc_jax.machine_description)."""

import json
import os
import subprocess
import sys

import jax

from optinc_jax import cpu_model, machine_description


def test_cpu_model_reads_the_model_name_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
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


def test_machine_description_describes_this_process(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    described = machine_description()
    assert described["jax"] == jax.__version__
    assert described["backend"] == jax.default_backend()
    assert described["device"] == str(jax.devices()[0])
    assert described["device_count"] == jax.device_count()
    assert described["cpu_model"] == cpu_model()
    assert described["cpu_count"] == os.cpu_count()
    assert described["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert machine_description()["OPENBLAS_NUM_THREADS"] is None
    # strict JSON, as result.json is written; nothing in it changes between calls
    assert json.loads(json.dumps(described, allow_nan=False)) == described
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert machine_description() == described


def test_importing_it_leaves_jax_unimported():
    # the benchmarks import cpu_model from the package before force_host_devices, which
    # must precede JAX
    code = "import benchmarks, sys; print('jax' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False"
