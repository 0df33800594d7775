"""Export of a trained ONN as plain arrays, the hand-off to deployment and other tools.

The ``.npz`` holds ``weights_0..L-1`` (``[out, in]``), ``biases_0..L-1`` (``[out]``) and the
scalars ``input_shift``, ``input_scale``, ``output_scale``, ``output_shift`` such that
``y = MLP((x - input_shift) * input_scale) * output_scale + output_shift`` (ReLU between
layers, none after the last) gives the raw PAM4 symbol amplitudes before the receiver.
It also records ``bits``, ``servers``, ``inputs`` and ``approx_layers`` (1-based).
"""

import itertools
import zipfile
from pathlib import Path

import numpy as np

from optinc_jax.learning.onn import ONN, onn_weights
from optinc_jax.validation import require_finite_array

__all__ = ["export_arrays", "load_exported", "mlp_forward_numpy", "save_exported"]


def export_arrays(model: ONN, params, *, bits: int, servers: int, approx_layers) -> dict:
    """The export dictionary of an ONN.

    Args:
        model: the ONN (for its fixed input/output affine maps).
        params: its parameters (``nnx.State``), e.g. the projected ones.
        bits: gradient bit width B.
        servers: server count N.
        approx_layers: 1-based indices of the diagonal x unitary matrices.

    Returns:
        ``{name: numpy array}`` in the documented format.

    Raises:
        ValueError: if a weight, bias or scalar is NaN or infinite.
    """
    arrays = {
        "input_shift": np.float64(model.input_shift),
        "input_scale": np.float64(model.input_scale),
        "output_scale": np.float64(model.output_scale),
        "output_shift": np.float64(model.output_shift),
        "bits": np.int64(bits),
        "servers": np.int64(servers),
        "inputs": np.int64(model.layer_sizes[0]),
        "approx_layers": np.asarray(list(approx_layers), dtype=np.int64),
    }
    for index, (weight, bias) in enumerate(onn_weights(params)):
        arrays[f"weights_{index}"] = np.asarray(weight)
        arrays[f"biases_{index}"] = np.asarray(bias)
    _require_finite(arrays, "the network")
    return arrays


def _require_finite(arrays: dict, source: str) -> None:
    """Raise if any floating array of an export holds NaN or infinity (a diverged run)."""
    for name, array in sorted(arrays.items()):
        if np.issubdtype(np.asarray(array).dtype, np.floating):
            require_finite_array(
                f"{name} of {source} (a diverged network cannot be exported)", array
            )


def save_exported(path: str | Path, arrays: dict) -> Path:
    """Writes the export dictionary as an uncompressed ``.npz`` (atomically).

    Args:
        path: destination; ``.npz`` is appended by numpy if missing.
        arrays: from :func:`export_arrays`.

    Returns:
        The written path.

    Raises:
        ValueError: if the destination's directory does not exist.
        OSError: if the file cannot be written (permissions, disk full); nothing is left.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the directory {path.parent} does not exist")
    temporary = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(temporary, **arrays)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def load_exported(path: str | Path) -> dict:
    """Reads an exported ``.npz`` back into a dict, checking that it is complete.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``{name: numpy array}``.

    Raises:
        ValueError: if the file is missing, unreadable or not a ``.npz``, arrays of the
            format are missing, shapes do not chain, or values are NaN or infinite.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    required = {"input_shift", "input_scale", "output_scale", "output_shift", "weights_0"}
    missing = sorted(required - set(arrays))
    if missing:
        raise ValueError(f"{path} is not an optinc export: missing {missing}")
    weights = _layer_arrays(arrays)
    for index, ((weight, bias), (next_weight, _)) in enumerate(itertools.pairwise(weights)):
        if next_weight.shape[1] != weight.shape[0] or bias.shape != (weight.shape[0],):
            raise ValueError(f"{path}: layer {index} shapes do not chain")
    _require_finite(arrays, str(path))
    return arrays


def _layer_arrays(arrays: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    count = sum(1 for name in arrays if name.startswith("weights_"))
    return [(arrays[f"weights_{i}"], arrays[f"biases_{i}"]) for i in range(count)]


def mlp_forward_numpy(arrays: dict, x: np.ndarray) -> np.ndarray:
    """Reference forward of an export in float64 numpy, independent of JAX and Flax.

    Args:
        arrays: export dictionary.
        x: ``[batch, I]`` preprocessed inputs.

    Returns:
        ``[batch, K]`` raw symbol amplitudes.
    """
    hidden = (np.asarray(x, np.float64) - arrays["input_shift"]) * arrays["input_scale"]
    layers = _layer_arrays(arrays)
    for index, (weight, bias) in enumerate(layers):
        hidden = hidden @ weight.astype(np.float64).T + bias
        if index < len(layers) - 1:
            hidden = np.maximum(hidden, 0.0)
    return hidden * arrays["output_scale"] + arrays["output_shift"]
