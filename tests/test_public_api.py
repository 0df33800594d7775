import importlib
import pkgutil
import subprocess
import sys

import optinc_jax


def test_every_module_imports_and_every_public_name_resolves():
    modules = [
        info.name for info in pkgutil.walk_packages(optinc_jax.__path__, prefix="optinc_jax.")
    ]
    assert {"optinc_jax.photonics.mesh", "optinc_jax.encoding.dataset"} <= set(modules)
    for name in modules:
        importlib.import_module(name)
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


def test_reexports_are_the_module_objects():
    for name, module_name in optinc_jax._EXPORTS.items():
        module = importlib.import_module(f"optinc_jax.{module_name}")
        assert getattr(optinc_jax, name) is getattr(module, name), name
        assert name in getattr(module, "__all__", [name]), f"{name} not public in {module_name}"
    from optinc_jax import cli

    assert cli.main.name == "main"


def test_top_level_names_say_what_they_do():
    # Ambiguous names were renamed (train_onn, split_to_servers, reconstruct_average).
    assert not {"run", "split", "reconstruct", "resolve_scenario"} & set(optinc_jax.__all__)
    assert {"train_onn", "split_to_servers", "reconstruct_average"} <= set(optinc_jax.__all__)


def test_subpackages_document_their_floor():
    for floor in ("photonics", "encoding", "learning", "network"):
        package = importlib.import_module(f"optinc_jax.{floor}")
        doc = package.__doc__ or ""
        assert len(doc) > 200 and "import" in doc, floor
