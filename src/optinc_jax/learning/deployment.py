"""Deployment of a trained ONN onto MZI phases: compile, verify, and measure robustness.

The steps of ``optinc deploy``, ``optinc verify`` and ``optinc robustness``, as plain
functions that take paths and numbers and return JSON-ready dicts (strict JSON: no NaN):

- :func:`deploy`: a run directory or an exported ``weights.npz`` -> a
  :class:`~optinc_jax.photonics.circuit.Circuit` (and the exported arrays);
- :func:`verify_circuit`: the exhaustive dataset through the phase-level simulation:
  accuracy, deviation from the digital network, MZIs by matrix;
- :func:`robustness_sweep`: Monte Carlo over PRNG keys of one non-ideality model of
  :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS` (trials vmapped, each one exhaustive
  over the dataset, chunked), accuracy against strength;
- :func:`plot_robustness`: the accuracy-versus-strength figure.

The optics live in :mod:`optinc_jax.photonics.circuit` and
:mod:`optinc_jax.photonics.nonideal`, which know nothing of training; this module joins
them to runs, exports, datasets and the receiver.
"""

import dataclasses
import functools
import math
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.dataset import Dataset, make_dataset_spec
from optinc_jax.encoding.units import receiver, reconstruct_average
from optinc_jax.learning.evaluate import default_chunk_size, evaluate_exhaustive
from optinc_jax.learning.export import export_arrays, load_exported
from optinc_jax.learning.trainer import load_run
from optinc_jax.photonics.circuit import (
    Circuit,
    SVDStage,
    calibrate_gains,
    circuit_forward,
    circuit_matrices,
    circuit_mzis,
    compile_circuit,
    digital_forward,
    forward_with_matrices,
    load_circuit,
)
from optinc_jax.photonics.mesh import Transfer
from optinc_jax.photonics.mzi import mzi_transfer
from optinc_jax.photonics.nonideal import NOISE_MODELS
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "SWEEP_SAMPLE_BUDGET",
    "circuit_summary",
    "deploy",
    "draw_robustness",
    "load_circuit_or_deploy",
    "parse_sweep",
    "plot_robustness",
    "robustness_sweep",
    "trial_counts",
    "verify_circuit",
]

SWEEP_SAMPLE_BUDGET = 1 << 16
"""Samples x trials held at once by :func:`robustness_sweep` (memory: this times the
widest layer, in floats, per activation)."""


# ----------------------------------------------------------------------------- deploy


def deploy(source: str | Path, *, approx_side: str | None = None) -> tuple[Circuit, dict]:
    """Compile a trained network into MZI phase settings.

    Args:
        source: a run directory written by ``optinc train`` (its latest checkpoint,
            projected) or an exported ``weights.npz`` (``optinc export``).
        approx_side: side of the approximated blocks' diagonals; ``None`` takes the run's
            own (``TrainConfig.approx_side``) for a run directory and detects it for an
            export, which does not record it.

    Returns:
        ``(circuit, arrays)``: the ideal :class:`~optinc_jax.photonics.circuit.Circuit`
        and the exported arrays it was compiled from.

    Raises:
        ValueError: if ``source`` does not exist, is not a readable export, holds NaN or
            infinite weights (a diverged run), or an approximated matrix is not of
            diagonal x orthogonal form.
        CheckpointError: if a run directory holds no readable checkpoint (a
            ``ValueError`` subclass).
    """
    path = Path(source)
    if path.is_dir():
        run = load_run(path)
        arrays = export_arrays(
            run.model,
            run.params,
            bits=run.scenario.bits,
            servers=run.scenario.servers,
            approx_layers=run.approx_layers,
        )
        side = approx_side or run.config.approx_side
    elif path.is_file():
        arrays, side = load_exported(path), approx_side
    else:
        raise ValueError(f"{source} does not exist (expected a run directory or weights.npz)")
    return compile_circuit(arrays, approx_side=side), arrays


def _is_circuit_file(path: Path) -> bool:
    try:
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as data:
            return "format_version" in data.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def load_circuit_or_deploy(source: str | Path) -> Circuit:
    """A circuit from a circuit file, an exported ``weights.npz`` or a run directory.

    Args:
        source: a ``circuit.npz`` (:func:`~optinc_jax.photonics.circuit.save_circuit`),
            a ``weights.npz`` or a run directory (compiled with :func:`deploy`).

    Returns:
        The :class:`~optinc_jax.photonics.circuit.Circuit`.

    Raises:
        ValueError: as :func:`~optinc_jax.photonics.circuit.load_circuit` or
            :func:`deploy`.
    """
    path = Path(source)
    if path.is_file() and _is_circuit_file(path):
        return load_circuit(path)
    return deploy(path)[0]


def circuit_summary(circuit: Circuit) -> dict[str, Any]:
    """JSON-ready description of a circuit: scenario, stages, MZIs by matrix.

    Args:
        circuit: a :class:`~optinc_jax.photonics.circuit.Circuit`.

    Returns:
        ``bits, servers, inputs, layers, approx_layers, mzis_by_matrix`` (one dict per
        matrix: ``matrix`` (1-based), ``rows``, ``cols``, ``kind`` (``"svd"`` or
        ``"blocks"``), ``blocks``, ``mzis``) and ``mzis`` (total).
    """
    info = circuit.info
    matrices = []
    for index, (stage, (rows, cols), count) in enumerate(
        zip(circuit.stages, info.shapes, circuit_mzis(circuit), strict=True), start=1
    ):
        svd = isinstance(stage, SVDStage)
        matrices.append(
            {
                "matrix": index,
                "rows": rows,
                "cols": cols,
                "kind": "svd" if svd else "blocks",
                "blocks": 1 if svd else len(info.diag_left[index - 1]),
                "mzis": count,
            }
        )
    layers = [info.shapes[0][1], *(rows for rows, _ in info.shapes)]
    return {
        "bits": info.bits,
        "servers": info.servers,
        "inputs": info.inputs,
        "layers": "-".join(str(width) for width in layers),
        "approx_layers": list(info.approx_layers),
        "mzis_by_matrix": matrices,
        "mzis": sum(entry["mzis"] for entry in matrices),
    }


def _dataset(circuit: Circuit, dataset: Dataset | None) -> Dataset:
    if dataset is not None:
        return dataset
    info = circuit.info
    return make_dataset_spec(info.bits, info.servers, info.inputs)


# ----------------------------------------------------------------------------- verify


@dataclasses.dataclass(frozen=True)
class _CircuitApply:
    """Hashable ``apply_fn(circuit, x)`` for :func:`evaluate_exhaustive`."""

    transfer: Transfer

    def __call__(self, circuit: Circuit, x: jax.Array) -> jax.Array:
        return circuit_forward(circuit, x, transfer=self.transfer)


def _decision_margin(y: jax.Array) -> jax.Array:
    """Distance of each amplitude to the nearest receiver threshold (0.5, 1.5, 2.5)."""
    thresholds = jnp.asarray([0.5, 1.5, 2.5], y.dtype).reshape((1,) * y.ndim + (3,))
    return jnp.min(jnp.abs(y[..., None] - thresholds), axis=-1)


@functools.partial(jax.jit, static_argnames=("dataset", "chunk_size", "transfer"))
def _compare_chunk(carry, circuit, start, *, dataset, chunk_size, transfer):
    deviation, margin, digital_correct = carry
    indices = start + jnp.arange(chunk_size, dtype=jnp.int32)
    valid = indices < dataset.size
    samples = dataset.samples(jnp.where(valid, indices, 0))
    optical = circuit_forward(circuit, samples.inputs, transfer=transfer)
    digital = digital_forward(circuit, samples.inputs)
    gap = jnp.where(valid[:, None], jnp.abs(optical - digital), 0.0)
    edge = jnp.where(valid[:, None], _decision_margin(optical), jnp.inf)
    hits = valid & (reconstruct_average(receiver(digital)) == samples.target)
    return (
        jnp.maximum(deviation, jnp.max(gap)),
        jnp.minimum(margin, jnp.min(edge)),
        digital_correct + jnp.sum(hits, dtype=jnp.int32),
    )


def verify_circuit(
    circuit: Circuit,
    *,
    dataset: Dataset | None = None,
    chunk_size: int | None = None,
    transfer: Transfer = mzi_transfer,
) -> dict[str, Any]:
    """The exhaustive dataset through the phase-level simulation, beside the digital network.

    Args:
        circuit: a :class:`~optinc_jax.photonics.circuit.Circuit` (ideal or perturbed).
        dataset: the dataset; ``None`` for the exhaustive grid of the circuit's ``bits``,
            ``servers`` and ``inputs``.
        chunk_size: samples per jitted chunk (``None``: the backend's default).
        transfer: the MZI convention of the simulation.

    Returns:
        JSON-ready dict: :func:`circuit_summary`'s fields, the phase-level
        ``accuracy, correct, total, invalid, error_histogram``, ``digital_accuracy`` and
        ``digital_correct`` (the exported network), ``max_abs_deviation`` (largest
        ``|y_circuit - y_digital|`` over every sample and output, PAM4 symbol units) and
        ``min_decision_margin`` (smallest distance of a circuit output amplitude to a
        receiver threshold: the noise headroom, symbol units).

    Raises:
        ValueError: if ``chunk_size`` is not a positive integer.
    """
    dataset = _dataset(circuit, dataset)
    chunk = min(require_int("chunk_size", chunk_size or default_chunk_size(), 1), dataset.size)
    evaluation = evaluate_exhaustive(_CircuitApply(transfer), circuit, dataset, chunk_size=chunk)
    carry = (jnp.float32(0.0), jnp.float32(jnp.inf), jnp.int32(0))
    for start in range(0, dataset.size, chunk):
        carry = _compare_chunk(
            carry,
            circuit,
            jnp.int32(start),
            dataset=dataset,
            chunk_size=chunk,
            transfer=transfer,
        )
    deviation, margin, digital_correct = (x.item() for x in jax.device_get(carry))
    return {
        **circuit_summary(circuit),
        **evaluation.to_json(),
        "digital_accuracy": int(digital_correct) / dataset.size,
        "digital_correct": int(digital_correct),
        "max_abs_deviation": _json_float(deviation),
        "min_decision_margin": _json_float(margin),
    }


def _json_float(value: float) -> float | None:
    """``value`` as a float, or ``None`` where it is NaN or infinite (strict JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- sweep


def parse_sweep(spec: str) -> tuple[float, ...]:
    """Strengths of a sweep written ``start:stop:count`` (evenly spaced, both ends in).

    Args:
        spec: e.g. ``"0:0.05:11"``: ``count >= 1`` values from ``start`` to ``stop``
            (``count = 1``: just ``start``). Values are rounded to 12 significant digits.

    Returns:
        The strengths, in sweep order (``stop < start`` sweeps downwards).

    Raises:
        ValueError: if ``spec`` is not three ``:``-separated fields, ``start`` or ``stop``
            is not a finite number or is negative, or ``count`` is not an integer ``>= 1``.

    Examples:
        >>> parse_sweep("0:0.05:6")
        (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)
        >>> parse_sweep("0:1")
        Traceback (most recent call last):
        ...
        ValueError: sweep must be start:stop:count (e.g. 0:0.05:11), got '0:1'
    """
    fields = str(spec).split(":")
    if len(fields) != 3:
        raise ValueError(f"sweep must be start:stop:count (e.g. 0:0.05:11), got {spec!r}")
    try:
        start, stop = float(fields[0]), float(fields[1])
    except ValueError:
        raise ValueError(f"sweep start and stop must be numbers, got {spec!r}") from None
    for name, value in (("start", start), ("stop", stop)):
        require_real(f"sweep {name}", value, low=0.0)
    try:
        count = int(fields[2])
    except ValueError:
        raise ValueError(f"sweep count must be an integer >= 1, got {fields[2]!r}") from None
    count = require_int("sweep count", count, 1)
    values = np.linspace(start, stop, count) if count > 1 else np.array([start])
    return tuple(float(f"{value:.12g}") for value in values)


def _trial(circuit, key, strength, *, model, dataset, chunk_size, transfer, calibrate):
    """``(correct, invalid)`` of one trial: perturb, build the matrices, every chunk."""
    noise = NOISE_MODELS[model]
    circuit = noise.apply_to_chip(circuit, key, strength)
    if calibrate:
        circuit = calibrate_gains(circuit, transfer=transfer)
    matrices = tuple(jnp.real(m) for m in circuit_matrices(circuit, transfer=transfer))

    def chunk(index, counts):
        correct, invalid = counts
        indices = index * chunk_size + jnp.arange(chunk_size, dtype=jnp.int32)
        valid = indices < dataset.size
        indices = jnp.where(valid, indices, 0)
        samples = dataset.samples(indices)
        y = forward_with_matrices(circuit, matrices, samples.inputs)
        y = noise.apply_to_outputs(y, key, indices, strength)
        predicted = reconstruct_average(receiver(y))
        correct += jnp.sum(valid & (predicted == samples.target), dtype=jnp.int32)
        invalid += jnp.sum(valid & (predicted < 0), dtype=jnp.int32)
        return correct, invalid

    chunks = -(-dataset.size // chunk_size)
    return jax.lax.fori_loop(0, chunks, chunk, (jnp.int32(0), jnp.int32(0)))


_STATIC = ("model", "dataset", "chunk_size", "transfer", "calibrate")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _trials_vmapped(circuit, keys, strength, **static):
    return jax.vmap(functools.partial(_trial, **static), in_axes=(None, 0, None))(
        circuit, keys, strength
    )


@functools.partial(jax.jit, static_argnames=_STATIC)
def _trial_jitted(circuit, key, strength, **static):
    return _trial(circuit, key, strength, **static)


def _as_key(key: jax.Array | int) -> jax.Array:
    if isinstance(key, bool | int | np.integer):
        return jax.random.key(require_int("seed", key, 0, 2**32 - 1))
    return key


def _check_strength(model: str, strength: object) -> float:
    noise = NOISE_MODELS[model]
    value = require_real(f"{model} strength ({noise.unit})", strength, low=0.0)
    if noise.integer and value != int(value):
        raise ValueError(f"{model} strength must be a whole number of {noise.unit}, got {value}")
    return value


def _model(model: str) -> str:
    return require_choice("model", model, tuple(NOISE_MODELS))


def _sweep_chunk(chunk_size: int | None, trials: int, dataset: Dataset) -> int:
    if chunk_size is None:
        chunk_size = max(1, SWEEP_SAMPLE_BUDGET // trials)
    return min(require_int("chunk_size", chunk_size, 1), dataset.size)


def trial_counts(
    circuit: Circuit,
    model: str,
    strength: float,
    key: jax.Array | int,
    *,
    dataset: Dataset | None = None,
    chunk_size: int | None = None,
    transfer: Transfer = mzi_transfer,
    calibrate: bool = False,
) -> tuple[int, int]:
    """One Monte Carlo trial: the perturbed circuit on the whole dataset.

    The per-trial computation of :func:`robustness_sweep`, for one key at a time
    (:func:`robustness_sweep` vmaps the same function over its trial keys).

    Args:
        circuit: the ideal circuit.
        model: a key of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS`.
        strength: the model's strength in its unit.
        key: PRNG key of the trial (or an integer seed).
        dataset: ``None`` for the circuit's exhaustive grid.
        chunk_size: samples per chunk (``None``: :data:`SWEEP_SAMPLE_BUDGET`).
        transfer: the MZI convention.
        calibrate: recalibrate every stage's gain after the perturbation
            (:func:`~optinc_jax.photonics.circuit.calibrate_gains`).

    Returns:
        ``(correct, invalid)`` sample counts.

    Raises:
        ValueError: on an unknown model, a negative or non-finite strength (or a
            fractional one where whole numbers are needed), or a bad chunk size.
    """
    model = _model(model)
    value = _check_strength(model, strength)
    dataset = _dataset(circuit, dataset)
    correct, invalid = _trial_jitted(
        circuit,
        _as_key(key),
        jnp.float32(value),
        model=model,
        dataset=dataset,
        chunk_size=_sweep_chunk(chunk_size, 1, dataset),
        transfer=transfer,
        calibrate=bool(calibrate),
    )
    return int(correct), int(invalid)


def robustness_sweep(
    circuit: Circuit,
    model: str,
    strengths: Sequence[float],
    trials: int,
    key: jax.Array | int,
    *,
    dataset: Dataset | None = None,
    chunk_size: int | None = None,
    transfer: Transfer = mzi_transfer,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Exhaustive accuracy against the strength of one non-ideality, Monte Carlo over keys.

    For every strength, ``trials`` perturbed circuits (trial ``t`` uses key
    ``jax.random.split(key, trials)[t]`` at every strength: common random numbers, so the
    curves are smooth) are each evaluated on the whole dataset; the trials are vmapped,
    and the dataset goes through in chunks of ``chunk_size`` samples per trial (memory:
    ``trials x chunk_size x`` the widest layer). One compilation serves every strength.

    Args:
        circuit: the ideal circuit.
        model: a key of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS` (``"phase"``,
            ``"dac"``, ``"loss"``, ``"splitter"``, ``"crosstalk"``, ``"receiver"``).
        strengths: strengths in the model's unit, in sweep order (e.g.
            :func:`parse_sweep`).
        trials: Monte Carlo trials per strength, ``>= 1``.
        key: PRNG key, or an integer seed.
        dataset: ``None`` for the circuit's exhaustive grid.
        chunk_size: samples per chunk and trial; ``None`` keeps ``trials x chunk_size``
            at :data:`SWEEP_SAMPLE_BUDGET`.
        transfer: the MZI convention.
        calibrate: recalibrate every stage's electronic gain against the digital weights
            after each perturbation (:func:`~optinc_jax.photonics.circuit.calibrate_gains`),
            as a chip calibrated after fabrication would be; it undoes a uniform loss.

    Returns:
        JSON-ready dict: ``model, calibrated, unit, description, strengths, trials,
        seed`` (``None`` when a key was given), ``samples`` and per strength
        ``accuracy_mean, accuracy_std`` (over trials, ``ddof = 0``), ``accuracy_min,
        accuracy_max, invalid_mean``, ``accuracy_trials`` (``[strength][trial]``),
        ``first_below_100`` and ``first_below_99`` (the first strength, in sweep order,
        whose mean accuracy is below 100 % / 99 %; ``None`` if none is), ``seconds``,
        and :func:`circuit_summary`'s fields.

    Raises:
        ValueError: on an unknown model, no strengths, a negative or non-finite strength
            (a fractional one for ``"dac"``), ``trials < 1`` or a bad chunk size.
    """
    model = _model(model)
    values = [_check_strength(model, s) for s in strengths]
    if not values:
        raise ValueError("strengths must hold at least one value")
    trials = require_int("trials", trials, 1)
    dataset = _dataset(circuit, dataset)
    chunk = _sweep_chunk(chunk_size, trials, dataset)
    keys = jax.random.split(_as_key(key), trials)
    static = {
        "model": model,
        "dataset": dataset,
        "chunk_size": chunk,
        "transfer": transfer,
        "calibrate": bool(calibrate),
    }
    start = time.perf_counter()
    correct, invalid = [], []
    for value in values:
        counts = _trials_vmapped(circuit, keys, jnp.float32(value), **static)
        c, i = jax.device_get(counts)
        correct.append([int(v) for v in c])
        invalid.append([int(v) for v in i])
    seconds = time.perf_counter() - start
    total = dataset.size
    accuracy = np.asarray(correct, np.float64) / total

    def first_below(percent: int) -> float | None:
        for value, row in zip(values, correct, strict=True):
            if 100 * sum(row) < percent * trials * total:  # exact: integer counts
                return value
        return None

    noise = NOISE_MODELS[model]
    return {
        "model": model,
        "calibrated": bool(calibrate),
        "unit": noise.unit,
        "description": noise.description,
        "strengths": values,
        "trials": trials,
        "seed": int(key) if isinstance(key, int | np.integer) else None,  # bool refused above
        "samples": total,
        "accuracy_mean": accuracy.mean(axis=1).tolist(),
        "accuracy_std": accuracy.std(axis=1).tolist(),
        "accuracy_min": accuracy.min(axis=1).tolist(),
        "accuracy_max": accuracy.max(axis=1).tolist(),
        "invalid_mean": np.mean(invalid, axis=1).tolist(),
        "accuracy_trials": accuracy.tolist(),
        "first_below_100": first_below(100),
        "first_below_99": first_below(99),
        "seconds": seconds,
        **circuit_summary(circuit),
    }


def _check_results(results: dict | Sequence[dict], labels: Sequence[str] | None):
    results = [results] if isinstance(results, dict) else list(results)
    if not results or len({r["model"] for r in results}) != 1:
        raise ValueError("plot_robustness needs one or more results of the same model")
    if labels is None:
        labels = [f"{r['layers']} approx {r['approx_layers'] or 'none'}" for r in results]
    if len(labels) != len(results):
        raise ValueError(f"got {len(labels)} labels for {len(results)} results")
    return results, list(labels)


def draw_robustness(
    ax: Any,
    results: dict | Sequence[dict],
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Draw accuracy against strength on a matplotlib ``Axes`` (see :func:`plot_robustness`).

    Args:
        ax: the axes.
        results: one :func:`robustness_sweep` result, or several of the same model.
        labels: one legend label per result (default: layers and approximated matrices).
        title: axes title (default: the model's description).

    Raises:
        ValueError: if the results mix models or ``labels`` does not match them.
    """
    results, labels = _check_results(results, labels)
    descending = False
    for index, (result, label) in enumerate(zip(results, labels, strict=True)):
        color = f"C{index}"
        x = np.asarray(result["strengths"], float)
        # A sweep that weakens the hardware with decreasing values (DAC bits, where 0 is the
        # ideal DAC) is drawn on a reversed axis without its ideal point.
        shown = x != 0 if NOISE_MODELS[result["model"]].integer else np.ones(x.shape, bool)
        descending = descending or bool(np.all(np.diff(x[shown]) < 0) and shown.sum() > 1)
        mean = 100 * np.asarray(result["accuracy_mean"])[shown]
        std = 100 * np.asarray(result["accuracy_std"])[shown]
        trials = result["trials"]
        text = f"{label} (mean of {trials})" if trials > 1 else label
        ax.plot(x[shown], mean, "o-", color=color, ms=3, label=text)
        if trials > 1:
            ax.fill_between(
                x[shown], mean - std, np.minimum(mean + std, 100), color=color, alpha=0.2
            )
            for field in ("accuracy_min", "accuracy_max"):
                ax.plot(x[shown], 100 * np.asarray(result[field])[shown], ":", color=color, lw=1)
    if descending:
        ax.invert_xaxis()
    ax.axhline(99, color="gray", ls="--", lw=0.8)
    calibrated = " (gains calibrated)" if results[0].get("calibrated") else ""
    ax.set(
        xlabel=f"{results[0]['model']} strength ({results[0]['unit']})",
        ylabel="exhaustive accuracy (%)",
        title=(title or results[0]["description"]) + calibrated,
        ylim=(-2, 102),
    )
    ax.legend(fontsize=7, loc="lower left")


def plot_robustness(
    results: dict | Sequence[dict],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Accuracy against strength: the mean, and over several trials a +-std band and range.

    Args:
        results: one :func:`robustness_sweep` result, or several of the same model (e.g.
            one network with and one without approximation).
        path: PNG to write (matplotlib, Agg backend).
        labels: one legend label per result (default: the layer widths and
            approximated matrices).
        title: figure title (default: the model's description).

    Returns:
        The written path.

    Raises:
        ValueError: if the results mix models, ``labels`` does not match them, or the
            destination's directory does not exist.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_results(results, labels)
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: the directory {path.parent} does not exist")
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_robustness(ax, results, labels=labels, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
