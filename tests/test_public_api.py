import importlib
import pkgutil
import subprocess
import sys

import optinc_jax


def test_every_module_imports_and_every_public_name_resolves():
    modules = [info.name for info in pkgutil.iter_modules(optinc_jax.__path__)]
    assert {"mzi", "mesh", "decompose", "svd_mapping", "area", "approx", "dataset"} <= set(modules)
    for name in modules:
        importlib.import_module(f"optinc_jax.{name}")
    for name in optinc_jax.__all__:
        assert getattr(optinc_jax, name) is not None
    assert "clements_unitary" in dir(optinc_jax)


def test_unknown_attribute_is_an_attribute_error():
    try:
        optinc_jax.does_not_exist  # noqa: B018
    except AttributeError as error:
        assert "does_not_exist" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_package_import_is_lazy():
    code = "import sys, optinc_jax; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
