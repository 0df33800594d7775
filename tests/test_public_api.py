import importlib
import pkgutil
import subprocess
import sys

import optinc_jax


def test_every_module_imports_and_every_public_name_resolves():
    modules = [
        info.name for info in pkgutil.walk_packages(optinc_jax.__path__, prefix="optinc_jax.")
    ]
    assert {"optinc_jax.photonics.mzi", "optinc_jax.encoding.dataset"} <= set(modules)
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
    from optinc_jax import cli, scenarios
    from optinc_jax.encoding import dataset, pam4, quantize, units
    from optinc_jax.learning import checkpoint, evaluate, export, loss, onn, projection, train
    from optinc_jax.photonics import approx, area, decompose, mesh, mzi, svd_mapping

    pairs = [
        (approx.approx_diag_unitary, "approx_diag_unitary"),
        (area.area_ratio, "area_ratio"),
        (checkpoint.TrainCheckpointer, "TrainCheckpointer"),
        (dataset.dataset_samples, "dataset_samples"),
        (decompose.decompose_clements, "decompose_clements"),
        (evaluate.evaluate_exhaustive, "evaluate_exhaustive"),
        (export.export_arrays, "export_arrays"),
        (loss.two_stage_loss, "two_stage_loss"),
        (mesh.clements_unitary, "clements_unitary"),
        (mzi.mzi_transfer, "mzi_transfer"),
        (onn.ONN, "ONN"),
        (pam4.encode_pam4, "encode_pam4"),
        (projection.projection_diag_unitary, "projection_diag_unitary"),
        (quantize.quantize_gradients, "quantize_gradients"),
        (scenarios.get_scenario, "get_scenario"),
        (svd_mapping.map_matrix_svd, "map_matrix_svd"),
        (train.run, "run"),
        (units.receiver, "receiver"),
    ]
    for obj, name in pairs:
        assert getattr(optinc_jax, name) is obj
    assert cli.main.name == "main"
