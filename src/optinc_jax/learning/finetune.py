r"""Noise-aware fine-tuning of a deployed circuit: its phase settings trained under noise.

:func:`finetune_circuit` takes a deployed :class:`~optinc_jax.photonics.circuit.Circuit`
and trains its physical settings so that it stays accurate when one non-ideality of
:data:`~optinc_jax.photonics.nonideal.NOISE_MODELS` acts on it. This is not in the paper
(OptINC trains the digital network and maps it onto the meshes once); it is an addition.

**Trainable settings** (:func:`circuit_settings`): every phase of every mesh (``theta``,
``phi``, the output screen), every attenuator's ``theta`` and ``phi``, every stage's
electronic ``gain`` and ``bias``: the real numbers a chip's controller sets. The
fabrication imperfections (``coupler_error``, ``loss_db``) and the fixed input/output
scalings of the encoding are not trained. Complex numbers only appear inside the forward
map (:func:`~optinc_jax.photonics.circuit.circuit_forward`).

**One step** draws a minibatch of the dataset and a fresh noise realisation: the chip-level
model perturbs the circuit built from the current settings (a new chip per step), the
phase-level forward runs the batch through it, the receiver model (if chosen) adds its noise
to the output amplitudes, and Adam follows the gradient of the loss
with respect to the *unperturbed* settings; the learning rate decays from
``learning_rate`` to 0 on a cosine over all steps, so that the last epochs settle. The
``dac`` model rounds the phases, whose gradient is zero almost everywhere: it is trained
with the straight-through estimator (forward quantized, backward identity).

**Loss**: the per-symbol MSE with uniform weights, ``mean_s (1/K) sum_k (y_sk - t_sk)^2``
(:func:`~optinc_jax.learning.loss.weighted_symbol_mse` with
:func:`~optinc_jax.learning.loss.symbol_weights` of base 1, the trainer's stage-1 loss).
Under noise its expectation is the squared bias plus the variance of every output
amplitude around its PAM4 level, which is what the receiver's thresholds (0.5 symbols away)
need small; a wrong least significant symbol costs a sample as much as a wrong most
significant one, so no symbol is weighted above another (the stage-2 reconstruction term
would weight them by ``4^k``).

**One epoch** is one jitted ``lax.scan`` over its steps: the sample indices (a permutation
of the dataset, or draws with replacement when an epoch needs more samples than it holds)
and the noise keys are drawn on device; nothing crosses to the host inside an epoch. No
SVD is involved: the meshes are built from their phases.

**Checkpoint selection.** Before training and after every epoch the circuit is evaluated
exhaustively (:func:`evaluate_finetune`): noise-free through the phase-level simulation,
and under the noise at the training strength over ``trials`` Monte Carlo chips whose keys
are the same at every evaluation (common random numbers: ``jax.random.split(key(seed),
trials)``, the keys of :func:`~optinc_jax.learning.deployment.robustness_sweep` with the
same seed). The returned circuit is, among the evaluated ones with the best noise-free
accuracy (100 % when any reaches it), the one with the best noisy accuracy, the earliest
on a tie: the input circuit itself when no epoch beats it. A fine-tuned circuit's
``digital_weights`` are set to the real matrices its noise-free optics apply, so that
:func:`~optinc_jax.photonics.circuit.digital_forward` is the network the fine-tuned
circuit computes (its biases changed too). Measure the result with a seed other than the
selection's: the selection favours chips that were lucky on its own keys.
"""

import dataclasses
import functools
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optinc_jax.encoding.dataset import Dataset, make_dataset_spec
from optinc_jax.encoding.units import receiver, reconstruct_average
from optinc_jax.learning.loss import symbol_weights, weighted_symbol_mse
from optinc_jax.learning.step import PERMUTATION_LIMIT
from optinc_jax.photonics.circuit import (
    Circuit,
    SVDStage,
    circuit_forward,
    circuit_matrices,
    forward_with_matrices,
)
from optinc_jax.photonics.nonideal import NOISE_MODELS
from optinc_jax.photonics.precision import full_matmul
from optinc_jax.validation import require_choice, require_int, require_real

__all__ = [
    "FinetuneEvaluation",
    "FinetuneState",
    "NoiseFinetuneConfig",
    "circuit_settings",
    "evaluate_finetune",
    "finetune_circuit",
    "finetune_summary",
    "with_settings",
]

MAX_SEED = 2**32 - 1
"""Largest seed: the PRNG key takes an unsigned 32-bit seed."""

EVAL_CHUNK = 1 << 15
"""Samples per chunk of the exhaustive evaluations (per trial; trials run one by one)."""

_MESH_FIELDS = ("theta", "phi", "output_phase")
_COLUMN_FIELDS = ("theta", "phi")
_STRAIGHT_THROUGH = frozenset({"dac"})
"""Models trained with the straight-through estimator (their perturbation has zero gradient)."""


@dataclasses.dataclass(frozen=True)
class NoiseFinetuneConfig:
    """What a noise-aware fine-tuning does (all of it lands in the records).

    Attributes:
        noise_model: a key of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS`
            (``"phase"``, ``"dac"``, ``"loss"``, ``"splitter"``, ``"crosstalk"``,
            ``"receiver"``).
        strength: the model's strength in its unit (rad for ``phase``; whole bits for
            ``dac``), ``>= 0``; training and the per-epoch noisy evaluation use it.
        epochs: epochs of training, ``>= 1`` (each followed by an evaluation).
        steps_per_epoch: optimizer steps (one noise realisation each) per epoch.
        batch_size: samples per step.
        learning_rate: peak Adam learning rate (about rad per step for the phases),
            ``>= 0``; it decays to 0 on a cosine over all steps.
        trials: Monte Carlo chips of each noisy evaluation, ``>= 1``.
        seed: seed of the sample draws, the training noise and the evaluation chips, in
            ``[0, 2^32)``.
    """

    noise_model: str = "phase"
    strength: float = 0.004
    epochs: int = 10
    steps_per_epoch: int = 40
    batch_size: int = 1024
    learning_rate: float = 2e-4
    trials: int = 8
    seed: int = 0

    def __post_init__(self):
        """Validates every field (one ``ValueError`` naming the field)."""
        require_choice("noise_model", self.noise_model, tuple(NOISE_MODELS))
        noise = NOISE_MODELS[self.noise_model]
        strength = require_real("strength", self.strength, low=0.0)
        if noise.integer and strength != int(strength):
            raise ValueError(
                f"strength must be a whole number of {noise.unit} for noise_model "
                f"{self.noise_model!r}, got {self.strength}"
            )
        for name in ("epochs", "steps_per_epoch", "batch_size", "trials"):
            require_int(name, getattr(self, name), 1)
        require_real("learning_rate", self.learning_rate, low=0.0)
        require_int("seed", self.seed, 0, MAX_SEED)

    def replace(self, **changes: Any) -> "NoiseFinetuneConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_json` is the inverse."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> "NoiseFinetuneConfig":
        """The config of :meth:`to_json`.

        Args:
            document: a dict with exactly the fields of :class:`NoiseFinetuneConfig`.

        Returns:
            The validated config.

        Raises:
            ValueError: on missing or extra keys or an invalid field.
        """
        if not isinstance(document, Mapping):
            raise ValueError(
                f"a NoiseFinetuneConfig record must be a JSON object, got {document!r}"
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        missing, extra = sorted(fields - set(document)), sorted(set(document) - fields)
        if missing or extra:
            raise ValueError(
                f"the NoiseFinetuneConfig record does not match this version: missing keys "
                f"{missing}, unknown keys {extra}"
            )
        return cls(**document)


# ----------------------------------------------------------------------------- settings


def circuit_settings(circuit: Circuit) -> tuple[dict[str, Any], ...]:
    """The trainable physical settings of a circuit, one dict per stage.

    Args:
        circuit: a :class:`~optinc_jax.photonics.circuit.Circuit`.

    Returns:
        Per stage ``{"input_mesh": {theta, phi, output_phase}, "attenuators": {theta, phi},
        "output_mesh": {...}, "gain", "bias"}`` for an SVD stage, ``{"meshes": {...},
        "attenuators": {...}, "gain", "bias"}`` for a block stage: the arrays of the
        circuit (rad for the phases, shapes as in the file format), not copies.
    """
    settings = []
    for stage in circuit.stages:
        meshes = ("input_mesh", "output_mesh") if isinstance(stage, SVDStage) else ("meshes",)
        entry: dict[str, Any] = {
            name: {f: getattr(getattr(stage, name), f) for f in _MESH_FIELDS} for name in meshes
        }
        entry["attenuators"] = {f: getattr(stage.attenuators, f) for f in _COLUMN_FIELDS}
        entry["gain"], entry["bias"] = stage.gain, stage.bias
        settings.append(entry)
    return tuple(settings)


def with_settings(circuit: Circuit, settings: tuple[dict[str, Any], ...]) -> Circuit:
    """The circuit with its trainable settings replaced (the inverse of :func:`circuit_settings`).

    Args:
        circuit: the circuit (its structure, imperfections and scalings are kept).
        settings: as :func:`circuit_settings` returns them.

    Returns:
        The :class:`~optinc_jax.photonics.circuit.Circuit` with those settings.

    Raises:
        ValueError: if ``settings`` does not hold one entry per stage.
    """
    if len(settings) != len(circuit.stages):
        raise ValueError(
            f"settings must hold one entry per stage ({len(circuit.stages)}), got {len(settings)}"
        )
    stages = []
    for stage, entry in zip(circuit.stages, settings, strict=True):
        changes = {
            name: getattr(stage, name)._replace(**values)
            for name, values in entry.items()
            if name not in ("gain", "bias")
        }
        stages.append(stage._replace(**changes, gain=entry["gain"], bias=entry["bias"]))
    return circuit._replace(stages=tuple(stages))


# ----------------------------------------------------------------------------- training


class FinetuneState(NamedTuple):
    """Settings and optimizer state of a fine-tuning.

    Attributes:
        settings: :func:`circuit_settings` of the circuit being trained (float32).
        opt_state: Adam's state (its step count drives the learning-rate decay).
    """

    settings: Any
    opt_state: Any


def _optimizer(learning_rate, total_steps: int) -> optax.GradientTransformation:
    """Adam, its learning rate decaying from ``learning_rate`` to 0 on a cosine over the run."""
    return optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))


def _noisy_circuit(circuit: Circuit, settings, key: jax.Array, strength, model: str) -> Circuit:
    """The circuit with ``settings``, perturbed by the chip-level model (if any)."""
    noise = NOISE_MODELS[model]
    current = with_settings(circuit, settings)
    if noise.perturb is None:
        return current
    perturbed = noise.perturb(current, key, strength)
    if model in _STRAIGHT_THROUGH:
        # Forward: the perturbed settings; backward: the identity.
        passed = jax.tree_util.tree_map(
            lambda s, p: s + jax.lax.stop_gradient(p - s), settings, circuit_settings(perturbed)
        )
        perturbed = with_settings(perturbed, passed)
    return perturbed


@functools.partial(
    jax.jit,
    static_argnames=("model", "dataset", "steps", "batch_size", "total_steps"),
    donate_argnames=("state",),
)
def _finetune_epoch(
    state, circuit, key, strength, learning_rate, *, model, dataset, steps, batch_size, total_steps
):
    """One epoch of ``steps`` noisy steps as one ``lax.scan``; returns the mean loss."""
    tx = _optimizer(learning_rate, total_steps)
    noise = NOISE_MODELS[model]
    draws = steps * batch_size
    index_key, noise_key = jax.random.split(key)
    if dataset.size <= PERMUTATION_LIMIT and draws <= dataset.size:
        indices = jax.random.permutation(index_key, dataset.size)[:draws]
    else:
        indices = jax.random.randint(index_key, (draws,), 0, dataset.size, dtype=jnp.int32)
    indices = indices.reshape(steps, batch_size)
    weights = symbol_weights(dataset.bits // 2, base=1.0)

    def step(state: FinetuneState, inputs):
        batch, step_key = inputs
        samples = dataset.samples(batch)
        chip_key, output_key = jax.random.split(step_key)

        def loss_fn(settings):
            chip = _noisy_circuit(circuit, settings, chip_key, strength, model)
            y = circuit_forward(chip, samples.inputs)
            if noise.perturb_output is not None:
                y = noise.perturb_output(y, output_key, strength)
            return weighted_symbol_mse(y, samples.target_symbols, weights)

        loss, grads = jax.value_and_grad(loss_fn)(state.settings)
        updates, opt_state = tx.update(grads, state.opt_state, state.settings)
        return FinetuneState(optax.apply_updates(state.settings, updates), opt_state), loss

    state, losses = jax.lax.scan(step, state, (indices, jax.random.split(noise_key, steps)))
    return state, jnp.mean(losses)


# ----------------------------------------------------------------------------- evaluation


class FinetuneEvaluation(NamedTuple):
    """Exhaustive accuracy of a circuit without and with noise.

    Attributes:
        ideal_correct: samples right through the noise-free phase-level simulation.
        ideal_accuracy: ``ideal_correct / samples``.
        noisy_correct: ``[trials]`` samples right per Monte Carlo chip.
        noisy_accuracy: mean over the chips of their exhaustive accuracy.
        noisy_loss: mean over chips and samples of the per-symbol loss (squared symbol
            units), the training loss's value on the whole dataset.
        samples: dataset size.
    """

    ideal_correct: int
    ideal_accuracy: float
    noisy_correct: tuple[int, ...]
    noisy_accuracy: float
    noisy_loss: float
    samples: int


@functools.partial(jax.jit, static_argnames=("model", "dataset", "chunk_size", "perturb"))
def _exhaustive(circuit, keys, strength, *, model, dataset, chunk_size, perturb):
    """``(correct [trials], squared error sum [trials])`` over the whole dataset."""
    noise = NOISE_MODELS[model]
    weights = symbol_weights(dataset.bits // 2, base=1.0)

    def trial(key):
        chip = noise.apply_to_chip(circuit, key, strength) if perturb else circuit
        matrices = tuple(jnp.real(m) for m in circuit_matrices(chip))

        def chunk(index, counts):
            correct, squared = counts
            indices = index * chunk_size + jnp.arange(chunk_size, dtype=jnp.int32)
            valid = indices < dataset.size
            indices = jnp.where(valid, indices, 0)
            samples = dataset.samples(indices)
            y = forward_with_matrices(chip, matrices, samples.inputs)
            if perturb:  # the noise of robustness_sweep, drawn per sample the same way
                y = noise.apply_to_outputs(y, key, indices, strength)
            predicted = reconstruct_average(receiver(y))
            correct += jnp.sum(valid & (predicted == samples.target), dtype=jnp.int32)
            error = full_matmul(
                (y - samples.target_symbols.astype(y.dtype)) ** 2, weights.astype(y.dtype)
            )
            squared += jnp.sum(jnp.where(valid, error, 0.0))
            return correct, squared

        chunks = -(-dataset.size // chunk_size)
        return jax.lax.fori_loop(0, chunks, chunk, (jnp.int32(0), jnp.float32(0.0)))

    return jax.lax.map(trial, keys)


def _dataset(circuit: Circuit, dataset: Dataset | None) -> Dataset:
    if dataset is not None:
        if dataset.bits != circuit.info.bits:
            raise ValueError(
                f"the dataset has {dataset.bits}-bit targets but the circuit is "
                f"{circuit.info.bits}-bit"
            )
        return dataset
    info = circuit.info
    return make_dataset_spec(info.bits, info.servers, info.inputs)


def evaluate_finetune(
    circuit: Circuit, config: NoiseFinetuneConfig, *, dataset: Dataset | None = None
) -> FinetuneEvaluation:
    """Exhaustive noise-free and noisy accuracy of a circuit, as fine-tuning measures it.

    The noisy part is ``config.trials`` chips under ``config.noise_model`` at
    ``config.strength``, with the keys ``jax.random.split(jax.random.key(config.seed),
    config.trials)``: the same per-chip counts as
    :func:`~optinc_jax.learning.deployment.robustness_sweep` with that seed (gains not
    recalibrated).

    Args:
        circuit: a :class:`~optinc_jax.photonics.circuit.Circuit`.
        config: the fine-tuning configuration (model, strength, trials, seed).
        dataset: ``None`` for the circuit's exhaustive grid.

    Returns:
        The :class:`FinetuneEvaluation`.

    Raises:
        ValueError: if the dataset's bit width is not the circuit's.
    """
    dataset = _dataset(circuit, dataset)
    static = {
        "model": config.noise_model,
        "dataset": dataset,
        "chunk_size": min(EVAL_CHUNK, dataset.size),
    }
    strength = jnp.float32(config.strength)
    root = jax.random.key(config.seed)
    ideal, _ = _exhaustive(circuit, root[None], strength, perturb=False, **static)
    keys = jax.random.split(root, config.trials)
    correct, squared = jax.device_get(_exhaustive(circuit, keys, strength, perturb=True, **static))
    total = dataset.size
    ideal_correct = int(jax.device_get(ideal)[0])
    return FinetuneEvaluation(
        ideal_correct=ideal_correct,
        ideal_accuracy=ideal_correct / total,
        noisy_correct=tuple(int(c) for c in correct),
        noisy_accuracy=float(np.sum(correct)) / (config.trials * total),
        noisy_loss=float(np.sum(squared, dtype=np.float64)) / (config.trials * total),
        samples=total,
    )


def _as_float64(circuit: Circuit, settings) -> Circuit:
    """The fine-tuned circuit as the file format holds it: float64 NumPy, digital reference."""
    tuned = with_settings(
        circuit,
        jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), jax.device_get(settings)),
    )
    matrices = jax.device_get(circuit_matrices(tuned))
    digital = tuple(
        np.real(np.asarray(m)).astype(np.asarray(d).dtype)
        for m, d in zip(matrices, circuit.digital_weights, strict=True)
    )
    return tuned._replace(digital_weights=digital)


def finetune_circuit(
    circuit: Circuit,
    config: NoiseFinetuneConfig,
    *,
    dataset: Dataset | None = None,
    progress: bool = False,
) -> tuple[Circuit, dict[str, Any]]:
    """Fine-tune a circuit's physical settings under sampled noise (module docstring).

    Args:
        circuit: the deployed :class:`~optinc_jax.photonics.circuit.Circuit` (from
            :func:`~optinc_jax.photonics.circuit.compile_circuit` or a file).
        config: the :class:`NoiseFinetuneConfig`.
        dataset: the training and evaluation set; ``None`` for the circuit's exhaustive
            grid.
        progress: print one line per epoch (on stderr).

    Returns:
        ``(circuit, history)``: the selected circuit (same structure and file format; the
        input circuit itself when no epoch beats it) and a JSON-ready history: ``epoch``
        (``0`` is the input), ``train_loss`` (mean over the epoch's steps; ``None`` at
        epoch 0), ``ideal_accuracy``, ``noisy_accuracy`` (mean over the chips),
        ``noisy_loss``, ``selected_epoch``, ``samples``, ``seconds`` and ``config``.

    Raises:
        ValueError: if the dataset's bit width is not the circuit's, or the loss becomes
            NaN or infinite (lower the learning rate).
    """
    dataset = _dataset(circuit, dataset)
    start = time.perf_counter()
    settings = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float32), circuit_settings(circuit)
    )
    total_steps = config.epochs * config.steps_per_epoch
    state = FinetuneState(settings, _optimizer(config.learning_rate, total_steps).init(settings))
    train_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    static = {
        "model": config.noise_model,
        "dataset": dataset,
        "steps": config.steps_per_epoch,
        "batch_size": config.batch_size,
        "total_steps": total_steps,
    }
    strength, learning_rate = jnp.float32(config.strength), jnp.float32(config.learning_rate)
    history: dict[str, Any] = {
        "epoch": [],
        "train_loss": [],
        "ideal_accuracy": [],
        "noisy_accuracy": [],
        "noisy_loss": [],
    }
    best = None  # (ideal correct, noisy correct, -epoch) of the best circuit, and it

    def record(epoch: int, loss: float | None, candidate: Circuit, settings) -> None:
        nonlocal best
        result = evaluate_finetune(candidate, config, dataset=dataset)
        for name, value in (
            ("epoch", epoch),
            ("train_loss", loss),
            ("ideal_accuracy", result.ideal_accuracy),
            ("noisy_accuracy", result.noisy_accuracy),
            ("noisy_loss", result.noisy_loss),
        ):
            history[name].append(value)
        rank = (result.ideal_correct, sum(result.noisy_correct), -epoch)
        if best is None or rank > best[0]:
            best = (rank, settings)
        if progress:
            shown = "-" if loss is None else f"{loss:.4g}"
            print(
                f"finetune {config.noise_model}={config.strength:g} epoch {epoch}: train loss "
                f"{shown}, ideal {100 * result.ideal_accuracy:.4f} %, noisy "
                f"{100 * result.noisy_accuracy:.4f} % (loss {result.noisy_loss:.4g})",
                file=sys.stderr,  # stdout stays for the --json document
                flush=True,
            )

    record(0, None, circuit, None)
    for epoch in range(1, config.epochs + 1):
        state, loss = _finetune_epoch(
            state,
            circuit,
            jax.random.fold_in(train_key, epoch),
            strength,
            learning_rate,
            **static,
        )
        loss = float(loss)
        if not np.isfinite(loss):
            raise ValueError(
                f"the fine-tuning loss became {loss} at epoch {epoch}; lower learning_rate "
                f"(got {config.learning_rate})"
            )
        settings = jax.device_get(state.settings)
        record(epoch, loss, with_settings(circuit, settings), settings)
    (_, _, negative_epoch), chosen = best
    history["selected_epoch"] = -negative_epoch
    history["samples"] = dataset.size
    history["seconds"] = time.perf_counter() - start
    history["config"] = config.to_json()
    return (circuit if chosen is None else _as_float64(circuit, chosen)), history


def finetune_summary(history: Mapping[str, Any]) -> dict[str, Any]:
    """The before / after numbers of a :func:`finetune_circuit` history, JSON-ready.

    Args:
        history: the history :func:`finetune_circuit` returned.

    Returns:
        ``config``, ``ideal_accuracy_before`` / ``_after``, ``noisy_accuracy_before`` /
        ``_after`` (the input circuit and the selected epoch, on the selection's chips),
        ``selected_epoch``, ``seconds`` and the per-epoch ``history`` (less its config).
    """
    selected = history["epoch"].index(history["selected_epoch"])
    return {
        "config": history["config"],
        "ideal_accuracy_before": history["ideal_accuracy"][0],
        "noisy_accuracy_before": history["noisy_accuracy"][0],
        "ideal_accuracy_after": history["ideal_accuracy"][selected],
        "noisy_accuracy_after": history["noisy_accuracy"][selected],
        "selected_epoch": history["selected_epoch"],
        "seconds": history["seconds"],
        "history": {key: value for key, value in history.items() if key != "config"},
    }
