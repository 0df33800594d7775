"""optinc-jax: a JAX/Flax simulator of OptINC (optical in-network computing).

OptINC replaces ring all-reduce with an optical neural network (ONN) built from
Mach-Zehnder-interferometer meshes that computes the quantized average of N servers'
PAM4-encoded gradients while the light passes through the interconnect.

The package is a house of four floors; each imports only the floors below it (a test
parses every import and enforces this):

- :mod:`optinc_jax.photonics`: MZIs, meshes, decomposition, SVD mapping, area, the
  diagonal x unitary approximation (imports nothing else of the package).
- :mod:`optinc_jax.encoding`: block quantization, PAM4, the optical units, datasets.
- :mod:`optinc_jax.learning`: the ONN, losses, projection, training, evaluation,
  checkpoints, export, reporting.
- :mod:`optinc_jax.network`: what is built from OptINC units (cascade, collective, ring
  all-reduce, cost models).

Beside them: :mod:`optinc_jax.validation` (input checks, the ground floor every floor may
use), :mod:`optinc_jax.paper` (the paper's numbers, plain data), :mod:`optinc_jax.scenarios`
(scenarios as values) and :mod:`optinc_jax.cli` on top.

The public API is re-exported here lazily (PEP 562), so that ``import optinc_jax.cli``
can set ``OPENBLAS_NUM_THREADS`` before JAX and NumPy are first imported.
"""

import importlib

__version__ = "0.1.0"

# Public name -> defining submodule.
_EXPORTS: dict[str, str] = {
    # Floor 1, photonics: devices, meshes, decomposition, mapping, area.
    "DiagUnitaryFactors": "photonics.approx",
    "approx_diag_unitary": "photonics.approx",
    "diag_unitary_factors": "photonics.approx",
    "factors_to_matrix": "photonics.approx",
    "merge_blocks": "photonics.approx",
    "partition_blocks": "photonics.approx",
    "AreaReport": "photonics.area",
    "MatrixArea": "photonics.area",
    "approx_matrix_mzis": "photonics.area",
    "area_ratio": "photonics.area",
    "format_approx": "photonics.area",
    "matrix_mzis": "photonics.area",
    "onn_area": "photonics.area",
    "parse_approx": "photonics.area",
    "parse_layers": "photonics.area",
    "decompose_clements": "photonics.decompose",
    "decompose_orthogonal": "photonics.decompose",
    "ClementsPhases": "photonics.mesh",
    "OrthogonalPhases": "photonics.mesh",
    "apply_clements": "photonics.mesh",
    "apply_orthogonal": "photonics.mesh",
    "clements_layout": "photonics.mesh",
    "clements_unitary": "photonics.mesh",
    "mzi_count": "photonics.mesh",
    "orthogonal_matrix": "photonics.mesh",
    "propagate_columns": "photonics.mesh",
    "random_clements_phases": "photonics.mesh",
    "random_orthogonal_phases": "photonics.mesh",
    "givens_rotation": "photonics.mzi",
    "mzi_transfer": "photonics.mzi",
    "SVDMeshMapping": "photonics.svd_mapping",
    "apply_svd_mapping": "photonics.svd_mapping",
    "map_matrix_svd": "photonics.svd_mapping",
    "reconstruct_matrix": "photonics.svd_mapping",
    # Floor 2, encoding: quantization, PAM4, optical units, datasets.
    "Dataset": "encoding.dataset",
    "DatasetSpec": "encoding.dataset",
    "FunctionDataset": "encoding.dataset",
    "Samples": "encoding.dataset",
    "brute_force_dataset": "encoding.dataset",
    "dataset_chunk": "encoding.dataset",
    "dataset_chunks": "encoding.dataset",
    "dataset_samples": "encoding.dataset",
    "exhaustive_dataset": "encoding.dataset",
    "make_dataset_spec": "encoding.dataset",
    "decode_pam4": "encoding.pam4",
    "encode_pam4": "encoding.pam4",
    "INVALID_CODE": "encoding.pam4",
    "INVALID_SYMBOL": "encoding.pam4",
    "num_symbols": "encoding.pam4",
    "pam4_levels": "encoding.pam4",
    "place_values": "encoding.pam4",
    "NONFINITE_EXPONENT": "encoding.quantize",
    "block_exponents": "encoding.quantize",
    "dequantize_blocks": "encoding.quantize",
    "exponent_overhead": "encoding.quantize",
    "nonfinite_blocks": "encoding.quantize",
    "dequantize_block_codes": "encoding.quantize",
    "from_blocks": "encoding.quantize",
    "quantize_block_codes": "encoding.quantize",
    "to_blocks": "encoding.quantize",
    "quantize_blocks": "encoding.quantize",
    "quantize_gradients": "encoding.quantize",
    "shared_block_exponents": "encoding.quantize",
    "grid_inputs": "encoding.units",
    "preprocess": "encoding.units",
    "quantized_average": "encoding.units",
    "receiver": "encoding.units",
    "reconstruct_average": "encoding.units",
    "split_to_servers": "encoding.units",
    # Floor 3, learning: the ONN, its training and evaluation.
    "CheckpointError": "learning.checkpoint",
    "CheckpointWriteError": "learning.checkpoint",
    "TrainCheckpointer": "learning.checkpoint",
    "TrainConfig": "learning.config",
    "learning_rate_schedule": "learning.config",
    "make_optimizer": "learning.config",
    "projection_due": "learning.config",
    "steps_per_epoch": "learning.config",
    "EvaluationResult": "learning.evaluate",
    "default_chunk_size": "learning.evaluate",
    "evaluate_exhaustive": "learning.evaluate",
    "predict_values": "learning.evaluate",
    "export_arrays": "learning.export",
    "load_exported": "learning.export",
    "mlp_forward_numpy": "learning.export",
    "save_exported": "learning.export",
    "STAGE2_LOSSES": "learning.loss",
    "reconstruction_mse": "learning.loss",
    "rounded_reconstruction_mse": "learning.loss",
    "symbol_weights": "learning.loss",
    "two_stage_loss": "learning.loss",
    "weighted_symbol_mse": "learning.loss",
    "ONN": "learning.onn",
    "ONNApply": "learning.onn",
    "build_onn": "learning.onn",
    "onn_apply_fn": "learning.onn",
    "onn_weights": "learning.onn",
    "weight_matrix_index": "learning.onn",
    "projection_diag_unitary": "learning.projection",
    "evaluation_record": "learning.reporting",
    "plot_training_curve": "learning.reporting",
    "write_json_atomically": "learning.reporting",
    "TrainState": "learning.step",
    "train_epoch": "learning.step",
    "LoadedRun": "learning.trainer",
    "TrainResult": "learning.trainer",
    "TrainingDiverged": "learning.trainer",
    "TrainingSetup": "learning.trainer",
    "build_training": "learning.trainer",
    "load_run": "learning.trainer",
    "train_onn": "learning.trainer",
    # Floor 4, network: OptINC as a collective, ring all-reduce, cost models, models.
    "CommStats": "network.collective",
    "ErrorModel": "network.collective",
    "OnnTable": "network.collective",
    "OptincAllReduceState": "network.collective",
    "average_codes": "network.collective",
    "error_model": "network.collective",
    "exact_onn_table": "network.collective",
    "make_onn_table": "network.collective",
    "onn_lookup_table": "network.collective",
    "optinc_allreduce": "network.collective",
    "pmean": "network.collective",
    "pmean_with_stats": "network.collective",
    "ring_pmean": "network.ring",
    "ring_pmean_with_stats": "network.ring",
    "CommunicationVolume": "network.volume",
    "communication_volume": "network.volume",
    "LatencyAssumptions": "network.latency",
    "LatencyBreakdown": "network.latency",
    "latency_breakdown": "network.latency",
    "ModelCost": "network.model_cost",
    "model_cost": "network.model_cost",
    "parameter_count": "network.model_cost",
    "train_step_flops": "network.model_cost",
    "ResNet": "network.resnet",
    "build_resnet": "network.resnet",
    "Llama": "network.llama",
    "LlamaConfig": "network.llama",
    "build_llama": "network.llama",
    "plot_communication_volume": "network.plots",
    "plot_latency": "network.plots",
    # Deployment, non-idealities, data-parallel training of real models.
    "Circuit": "photonics.circuit",
    "compile_circuit": "photonics.circuit",
    "circuit_forward": "photonics.circuit",
    "circuit_mzis": "photonics.circuit",
    "save_circuit": "photonics.circuit",
    "load_circuit": "photonics.circuit",
    "calibrate_gains": "photonics.circuit",
    "NOISE_MODELS": "photonics.nonideal",
    "phase_error": "photonics.nonideal",
    "dac_quantization": "photonics.nonideal",
    "insertion_loss": "photonics.nonideal",
    "splitter_error": "photonics.nonideal",
    "thermal_crosstalk": "photonics.nonideal",
    "receiver_noise": "photonics.nonideal",
    "chain_perturbations": "photonics.nonideal",
    "deploy": "learning.deployment",
    "load_circuit_or_deploy": "learning.deployment",
    "circuit_summary": "learning.deployment",
    "verify_circuit": "learning.deployment",
    "parse_sweep": "learning.deployment",
    "robustness_sweep": "learning.deployment",
    "plot_robustness": "learning.deployment",
    "DistributedConfig": "network.distributed",
    "DistributedResult": "network.distributed",
    "make_allreduce": "network.distributed",
    "server_mesh": "network.distributed",
    "train_distributed": "network.distributed",
    "load_cifar100": "network.data",
    "load_digits_data": "network.data",
    "load_text": "network.data",
    "stdlib_text_corpus": "network.data",
    "encode_bytes": "network.data",
    "decode_bytes": "network.data",
    # Further public names of the floors (used by tests and users alike).
    "MemoryFootprint": "learning.footprint",
    "RESNET_PRESETS": "network.resnet",
    "ResNetArchitecture": "network.resnet",
    "RunDirectoryBusy": "learning.run_lock",
    "RunDirectoryUnwritable": "learning.run_lock",
    "available_memory_bytes": "learning.footprint",
    "init_data_parallel_state": "network.distributed",
    "make_train_step": "network.distributed",
    "require_fits_memory": "learning.footprint",
    "run_directory_lock": "learning.run_lock",
    "table_ii_row": "network.distributed",
    "ALLREDUCES": "network.distributed",
    "build_distributed_model": "network.distributed",
    "load_training_data": "network.distributed",
    "make_distributed_optimizer": "network.distributed",
    "train_batches": "network.data",
    "training_footprint": "learning.footprint",
    "trial_counts": "learning.deployment",
    # Top level: scenarios as values.
    "SCENARIOS": "scenarios",
    "Scenario": "scenarios",
    "as_scenario": "scenarios",
    "get_scenario": "scenarios",
    "make_scenario": "scenarios",
    "register_scenario": "scenarios",
    "scenario_from_json": "scenarios",
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
