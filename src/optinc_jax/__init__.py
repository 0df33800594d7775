"""optinc-jax: a JAX/Flax simulator of OptINC (optical in-network computing).

OptINC replaces ring all-reduce with an optical neural network (ONN) built from
Mach-Zehnder-interferometer meshes that computes the quantized average of N servers'
PAM4-encoded gradients while the light passes through the interconnect.

The public API is re-exported here lazily (PEP 562), so that ``import optinc_jax.cli``
can set ``OPENBLAS_NUM_THREADS`` before JAX and NumPy are first imported.
"""

import importlib

__version__ = "0.1.0"

# Public name -> defining submodule.
_EXPORTS: dict[str, str] = {
    "DiagUnitaryFactors": "approx",
    "approx_diag_unitary": "approx",
    "diag_unitary_factors": "approx",
    "factors_to_matrix": "approx",
    "merge_blocks": "approx",
    "partition_blocks": "approx",
    "AreaReport": "area",
    "MatrixArea": "area",
    "PAPER_AREA_ROWS": "area",
    "PaperAreaRow": "area",
    "approx_matrix_mzis": "area",
    "area_ratio": "area",
    "format_approx": "area",
    "matrix_mzis": "area",
    "onn_area": "area",
    "parse_approx": "area",
    "parse_layers": "area",
    "CheckpointError": "checkpoint",
    "TrainCheckpointer": "checkpoint",
    "DatasetSpec": "dataset",
    "Samples": "dataset",
    "brute_force_dataset": "dataset",
    "dataset_chunk": "dataset",
    "dataset_chunks": "dataset",
    "dataset_samples": "dataset",
    "exhaustive_dataset": "dataset",
    "make_dataset_spec": "dataset",
    "decompose_clements": "decompose",
    "decompose_orthogonal": "decompose",
    "EvaluationResult": "evaluate",
    "default_chunk_size": "evaluate",
    "evaluate_exhaustive": "evaluate",
    "predict_values": "evaluate",
    "export_arrays": "export",
    "load_exported": "export",
    "mlp_forward_numpy": "export",
    "save_exported": "export",
    "STAGE2_LOSSES": "loss",
    "reconstruction_mse": "loss",
    "rounded_reconstruction_mse": "loss",
    "symbol_weights": "loss",
    "two_stage_loss": "loss",
    "weighted_symbol_mse": "loss",
    "ClementsPhases": "mesh",
    "OrthogonalPhases": "mesh",
    "apply_clements": "mesh",
    "apply_orthogonal": "mesh",
    "clements_layout": "mesh",
    "clements_unitary": "mesh",
    "mzi_count": "mesh",
    "orthogonal_matrix": "mesh",
    "random_clements_phases": "mesh",
    "random_orthogonal_phases": "mesh",
    "givens_rotation": "mzi",
    "mzi_transfer": "mzi",
    "ONN": "onn",
    "build_onn": "onn",
    "onn_apply_fn": "onn",
    "onn_weights": "onn",
    "weight_matrix_index": "onn",
    "decode_pam4": "pam4",
    "encode_pam4": "pam4",
    "num_symbols": "pam4",
    "pam4_levels": "pam4",
    "projection_diag_unitary": "projection",
    "block_exponents": "quantize",
    "dequantize_blocks": "quantize",
    "exponent_overhead": "quantize",
    "quantize_blocks": "quantize",
    "quantize_gradients": "quantize",
    "shared_block_exponents": "quantize",
    "SCENARIOS": "scenarios",
    "Scenario": "scenarios",
    "get_scenario": "scenarios",
    "make_scenario": "scenarios",
    "register_scenario": "scenarios",
    "SVDMeshMapping": "svd_mapping",
    "apply_svd_mapping": "svd_mapping",
    "map_matrix_svd": "svd_mapping",
    "reconstruct_matrix": "svd_mapping",
    "LoadedRun": "train",
    "TrainConfig": "train",
    "TrainResult": "train",
    "TrainState": "train",
    "evaluation_record": "train",
    "load_run": "train",
    "resolve_scenario": "train",
    "run": "train",
    "preprocess": "units",
    "quantized_average": "units",
    "receiver": "units",
    "reconstruct": "units",
    "split": "units",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    """Import a public name from its submodule on first access."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'optinc_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"optinc_jax.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public API."""
    return sorted(set(globals()) | set(__all__))
