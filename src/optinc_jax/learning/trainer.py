"""Hardware-aware training of the OptINC ONN (SPEC section 4): runs, resume, reload.

:func:`train_onn` trains a scenario's ONN on its exhaustive dataset (or on any
:class:`~optinc_jax.encoding.dataset.Dataset` passed in) with the two-stage loss, Adam and
a learning-rate schedule, one jitted epoch (:func:`optinc_jax.learning.step.train_epoch`)
at a time. The selected weight matrices are projected onto diagonal x unitary blocks every
``project_every`` epochs, between the jitted epochs (through ``condition_until`` also the
matrices the scenario approximates but the run keeps full); every evaluation measures the
*projected* network exhaustively, training stops at the first projected 100 %, and the
final parameters are always projected. Checkpoints are written atomically and a killed run
resumes from the last one with the same result it would have reached uninterrupted; a
finished run asked to resume returns its stored result. ``result.json`` records the epoch
and the training seconds at which the projected network first reached 100 %
(``first_full_accuracy``; ``null`` if it never did) and how far the final approximated
matrices are from diagonal x orthogonal form (``approx_residual``, the largest relative
Frobenius distance: float rounding, about 1e-6 for 8b8s; ``null`` without approximation).
Every evaluation during training is one pass of
:func:`optinc_jax.learning.focus.find_hard_samples` (on one device; a mesh run without
focus uses the sharded :func:`~optinc_jax.learning.evaluate.evaluate_exhaustive`): it
counts the right inputs exactly and records per-symbol wrong counts, the number of inputs
within ``focus_margin`` of a threshold and the smallest margin in the history; the error
histogram is evaluated once, at the end. With ``TrainConfig.focus_fraction > 0`` a share
of each following minibatch is drawn from those wrong and low-margin inputs.

A fresh run on one device compiles its programs on a second thread (``compile_ahead``):
the first epoch while the initial parameters are computed (from the shapes of
``build_training(..., abstract=True)``), then the projection, the scoring pass, the focused
and the stage-2 epochs while the first epochs run: the same programs, none twice.

A run is safe to leave alone: one writer holds the run directory's lock for the run's
lifetime (:mod:`optinc_jax.learning.run_lock`); a configuration that cannot fit in memory is
refused before the directory is touched (:mod:`optinc_jax.learning.footprint`); and a loss
or parameter that becomes NaN or infinite stops the run with :class:`TrainingDiverged`,
keeping the last finite checkpoint and writing a ``result.json`` that reports the
divergence and no accuracy.

Optionally (``TrainConfig.noise_epochs > 0``), a run that ends at projected 100 % is then
deployed onto MZI phases and fine-tuned under noise
(:func:`optinc_jax.learning.finetune.finetune_circuit`): the circuit goes to
``circuit_finetuned.npz`` and ``result.json`` gains a ``"noise_finetune"`` object.
"""

import concurrent.futures
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optinc_jax.encoding.dataset import Dataset, DatasetSpec, make_dataset_spec
from optinc_jax.encoding.padded_grid import make_padded_grid
from optinc_jax.learning.balance import TargetClasses, target_classes
from optinc_jax.learning.checkpoint import CheckpointError, TrainCheckpointer
from optinc_jax.learning.config import (
    TrainConfig,
    make_optimizer,
    projection_due,
    steps_per_epoch,
)
from optinc_jax.learning.evaluate import EvaluationResult, default_chunk_size, evaluate_exhaustive
from optinc_jax.learning.export import export_arrays
from optinc_jax.learning.finetune import (
    NoiseFinetuneConfig,
    finetune_circuit,
    finetune_summary,
)
from optinc_jax.learning.finish import finish_on_hard_set
from optinc_jax.learning.focus import HardSet, compile_hard_samples, find_hard_samples
from optinc_jax.learning.footprint import require_fits_memory, training_footprint
from optinc_jax.learning.machine import machine_description
from optinc_jax.learning.onn import ONN, ONNApply, build_onn, onn_apply_fn, onn_weights
from optinc_jax.learning.projection import (
    compile_projection_diag_unitary,
    projection_diag_unitary,
)
from optinc_jax.learning.refit import refit_last_layer, with_last_layer
from optinc_jax.learning.reporting import (
    evaluation_record,
    plot_training_curve,
    write_json_atomically,
)
from optinc_jax.learning.revival import (
    dataset_unit_activity,
    revive_dead_units,
    revived_optimizer_state,
)
from optinc_jax.learning.run_lock import run_directory_lock
from optinc_jax.learning.step import DATA_AXIS, PERMUTATION_LIMIT, TrainState, train_epoch
from optinc_jax.photonics.approx import relative_residual
from optinc_jax.photonics.circuit import compile_circuit, save_circuit
from optinc_jax.scenarios import SCENARIOS, Scenario, scenario_from_json

__all__ = [
    "LoadedRun",
    "TrainResult",
    "TrainingDiverged",
    "TrainingSetup",
    "build_training",
    "load_run",
    "train_onn",
]

RESULT_FILE = "result.json"
FINETUNED_CIRCUIT_FILE = "circuit_finetuned.npz"
_RECORD_KEYS = ("config", "history", "train_seconds", "stopped_at_full_accuracy")
"""Keys every checkpoint record of this version holds."""
CHECKPOINT_DIR = "checkpoints"


class TrainResult(NamedTuple):
    """What :func:`train_onn` returns (and writes to ``workdir/result.json``).

    Attributes:
        evaluation: exhaustive evaluation of the final (projected) network.
        params: final parameters (``nnx.State``), projected.
        apply_fn: pure ``apply_fn(params, x) -> y`` (an :class:`ONNApply`).
        epochs: epochs trained in total (resumed runs included).
        record: the JSON document written to ``result.json``.
    """

    evaluation: EvaluationResult
    params: Any
    apply_fn: ONNApply
    epochs: int
    record: dict


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or infinite; the run stopped.

    Attributes:
        epoch: the epoch (1-based) at whose end the non-finite value was found.
        last_checkpoint: epoch of the last (finite) checkpoint kept, or ``None``.
    """

    def __init__(self, message: str, epoch: int, last_checkpoint: int | None):
        super().__init__(message)
        self.epoch = epoch
        self.last_checkpoint = last_checkpoint


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every floating leaf of ``tree`` is free of NaN and infinity (one scalar)."""
    leaves = [
        jnp.ravel(leaf)
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    # one reduction over the joined leaves: compiles in a third of the time of one per leaf
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.bool_(True)


class TrainingSetup(NamedTuple):
    """Everything a run is built from, before any training.

    Attributes:
        scenario: the scenario value.
        approx_layers: 1-based approximated weight matrices.
        dataset: the evaluation set, whose accuracy the run reports (the training set too
            unless the config pads the grid).
        steps_per_epoch: optimizer steps per epoch.
        model: the freshly initialized ONN.
        apply_fn: its pure forward (compares by value).
        initial_state: initial parameters and optimizer state.
        train_dataset: the set the steps draw from: ``dataset`` itself, or with
            ``config.pad_levels`` the grid padded beyond both ends
            (:class:`~optinc_jax.encoding.padded_grid.PaddedGrid`), which holds
            ``dataset`` as its index range ``grid_range()``.
    """

    scenario: Scenario
    approx_layers: tuple[int, ...]
    dataset: Dataset
    steps_per_epoch: int
    model: ONN
    apply_fn: ONNApply
    initial_state: TrainState
    train_dataset: Dataset

    def judged_range(self) -> tuple[int, int] | None:
        """The evaluation set's index range inside the training set (``None``: the same set)."""
        if self.train_dataset is self.dataset:
            return None
        return self.train_dataset.grid_range()


def build_training(
    config: TrainConfig, dataset: Dataset | None = None, *, abstract: bool = False
) -> TrainingSetup:
    """The scenario, dataset, model and initial state a config describes.

    Args:
        config: the run's configuration.
        dataset: the training set; ``None`` for the scenario's exhaustive grid. Its
            ``bits`` must equal the scenario's (the ONN has ``bits / 2`` outputs).
        abstract: the model's parameters and the initial state as ``jax.ShapeDtypeStruct``
            leaves, computing nothing (what compiling the run's programs ahead needs);
            everything else as without it.

    Returns:
        The :class:`TrainingSetup`; with ``config.pad_levels`` it trains on the padded
        grid and judges the grid.

    Raises:
        ValueError: on a dataset of the wrong bit width or a batch larger than it, or a
            given dataset with ``config.pad_levels`` (only the scenario's grid is padded).
    """
    scenario = config.resolved_scenario()
    approx_layers = config.approx_layers()
    if dataset is None:
        dataset = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    elif config.pad_levels:
        raise ValueError(
            f"pad_levels={config.pad_levels} pads the scenario's grid; a run on a given "
            f"dataset ({dataset!r}) takes pad_levels=0"
        )
    elif dataset.bits != scenario.bits:
        raise ValueError(
            f"the dataset has {dataset.bits}-bit targets but scenario {scenario.name!r} is "
            f"{scenario.bits}-bit ({scenario.bits // 2} ONN outputs)"
        )
    train_dataset = (
        make_padded_grid(dataset, config.pad_levels, config.pad_continued_values)
        if config.pad_levels
        else dataset
    )
    steps = steps_per_epoch(config, train_dataset.size)
    symbols_per_input = scenario.bits // 2 // scenario.inputs

    def make_model():
        return build_onn(scenario.layers, symbols_per_input=symbols_per_input, seed=config.seed)

    model = nnx.eval_shape(make_model) if abstract else make_model()
    apply_fn, params = onn_apply_fn(model)
    tx = make_optimizer(config, config.epochs * steps)
    opt_state = jax.eval_shape(tx.init, params) if abstract else tx.init(params)
    return TrainingSetup(
        scenario,
        approx_layers,
        dataset,
        steps,
        model,
        apply_fn,
        TrainState(params, opt_state),
        train_dataset,
    )


def _project(config: TrainConfig, approx_layers: tuple[int, ...], params):
    return projection_diag_unitary(
        params, approx_layers, side=config.approx_side, refine_steps=config.refine_steps
    )


def _compile_ahead(
    config: TrainConfig,
    setup: "TrainingSetup",
    classes: TargetClasses | None,
    *,
    first_epoch: bool,
) -> list[tuple[int, concurrent.futures.Future]]:
    """Compiles, on a second thread, the programs a fresh one-device run needs.

    With ``first_epoch`` the thread starts while the run is set up (its initial parameters
    compiled and computed on the calling thread) and first compiles the first epoch and the
    epoch keys; without it the thread starts when the first epoch does, and the run compiles
    that epoch itself. Then, in the order the run needs them: the finiteness check and the
    projection, the scoring pass, the epochs that come later with other arguments (the
    focused stage-1 epoch, the stage-2 epoch). The programs are compiled from shapes alone
    (the keys' by making one) and the run waits for each program before it would need it
    (the scoring pass and the focused epoch before its first evaluation, which a sparse
    stage 1 puts after a few epochs), so nothing is compiled twice. Nothing the run computes
    changes: the same programs are compiled, off its critical path.

    Args:
        config: the run's configuration.
        setup: the run's :class:`TrainingSetup`, abstract (``build_training(...,
            abstract=True)``) or not: only the shapes and dtypes of its initial state count.
        classes: the balanced draw's target classes of the run (or ``None``).
        first_epoch: also compile the first epoch (and the keys it draws with).

    Returns:
        ``[(epoch, future)]``: wait for ``future`` before the epoch after ``epoch`` epochs
        runs (``epoch`` 0: before the first) and before anything else that follows
        ``epoch`` epochs; ``result()`` re-raises what failed in the thread.
    """
    # no sharding: as the run's own arrays on one device (a committed sharding would make
    # it another program)
    structure = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=x.weak_type),
        setup.initial_state,
    )
    first = 1
    hard = None
    if config.focus_fraction > 0:
        size = setup.train_dataset.size
        hard = HardSet(
            jax.ShapeDtypeStruct((size,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32)
        )

    def epoch_keys():
        # the eager programs that make the epoch keys, as the run calls them
        jax.random.fold_in(jax.random.key(config.seed), 0)

    def early():
        _all_finite.lower(structure.params).compile()
        if projection_due(config, first):
            compile_projection_diag_unitary(
                structure.params,
                config.conditioned_layers(first),
                side=config.approx_side,
                refine_steps=config.refine_steps,
            )

    def compile_scoring():
        compile_hard_samples(
            setup.apply_fn,
            structure.params,
            setup.train_dataset,
            margin=config.focus_margin,
            chunk_size=config.eval_chunk_size or default_chunk_size(),
            judged=setup.judged_range(),
        )

    def compile_epoch(epoch: int, hard: HardSet | None):
        leak = config.leak_at(epoch)
        train_epoch.lower(
            structure,
            jax.random.key(0),
            apply_fn=setup.apply_fn,
            dataset=setup.train_dataset,
            config=config,
            stage=1 if epoch < config.switch_epoch else 2,
            steps=setup.steps_per_epoch,
            mesh=None,
            hard=hard,
            classes=classes,
            leak=None if leak is None else jax.ShapeDtypeStruct((), jnp.float32),
        ).compile()

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahead")
    futures = []
    if first_epoch:
        futures.append((0, executor.submit(compile_epoch, 0, None)))
        futures.append((0, executor.submit(epoch_keys)))
    futures.append((first, executor.submit(early)))
    # the scoring pass is awaited only before the first epoch that scores (stage 1 may be
    # evaluated every few epochs: the run goes on meanwhile)
    scored = [epoch for epoch in range(first, config.epochs) if config.evaluation_due(epoch)]
    if scored:
        futures.append((scored[0], executor.submit(compile_scoring)))
    # the focused stage-1 epoch follows the first scoring (uniform draws until then)
    if hard is not None and scored and scored[0] < min(config.switch_epoch, config.epochs):
        futures.append((scored[0], executor.submit(compile_epoch, scored[0], hard)))
    if config.switch_epoch < config.epochs:
        futures.append(
            (config.switch_epoch, executor.submit(compile_epoch, config.switch_epoch, hard))
        )
    executor.shutdown(wait=False)
    return futures


def _await_compiled(
    ahead: list[tuple[int, concurrent.futures.Future]], epoch: int
) -> list[tuple[int, concurrent.futures.Future]]:
    """Waits for the programs compiled ahead that follow ``epoch`` epochs; returns the rest."""
    for _, future in (due := [item for item in ahead if item[0] <= epoch]):
        future.result()
    return [item for item in ahead if item not in due]


def _hardware_params(config: TrainConfig, approx_layers: tuple[int, ...], epoch: int, params):
    """The parameters as mapped to hardware after ``epoch`` epochs.

    After a projection epoch they already are projected and are returned as they are, so
    that training, ``result.json``, :func:`load_run` and the export all see the very same
    arrays (projecting twice agrees only up to float rounding); otherwise they are
    projected now.
    """
    if projection_due(config, epoch):
        return params
    return _project(config, approx_layers, params)


def _approx_residual(config: TrainConfig, approx_layers: tuple[int, ...], params) -> float | None:
    """The largest ``diag_unitary_residual`` of the approximated matrices.

    :func:`optinc_jax.photonics.approx.diag_unitary_residual` of each, from the run's own
    compiled projection and one program for every matrix (eager per-matrix calls compiled
    a few programs per shape: about 2.7 s after an 8b4s run). ``None`` without any; float
    rounding (about 1e-6 for 8b8s) when the network is what the hardware implements.
    """
    if not approx_layers:
        return None
    return float(_largest_residual(params, _project(config, approx_layers, params), approx_layers))


@partial(jax.jit, static_argnames="approx_layers")
def _largest_residual(params, projected, approx_layers: tuple[int, ...]) -> jax.Array:
    weights, approximations = onn_weights(params), onn_weights(projected)
    return jnp.max(
        jnp.stack(
            [
                relative_residual(weights[index - 1][0], approximations[index - 1][0])
                for index in approx_layers
            ]
        )
    )


def _score_hard_samples(config: TrainConfig, setup: "TrainingSetup", epoch: int, params):
    """The hard set of the hardware parameters after ``epoch`` epochs, with diagnostics."""
    return find_hard_samples(
        setup.apply_fn,
        _hardware_params(config, setup.approx_layers, epoch, params),
        setup.train_dataset,
        margin=config.focus_margin,
        chunk_size=config.eval_chunk_size or default_chunk_size(),
        judged=setup.judged_range(),
    )


def _dataset_description(dataset: Dataset) -> dict[str, Any]:
    if isinstance(dataset, DatasetSpec):
        return {"kind": "grid", **dataset._asdict(), "size": dataset.size}
    return {"kind": "custom", "repr": repr(dataset), "size": dataset.size, "bits": dataset.bits}


def _training_set_description(setup: TrainingSetup) -> dict[str, Any]:
    """``{"training_set": ...}`` when the steps draw from a padded grid, else nothing."""
    if setup.judged_range() is None:
        return {}
    padded = setup.train_dataset
    start, stop = padded.grid_range()
    return {
        "training_set": {
            "kind": "padded grid",
            "pad_levels": padded.pad_levels,
            "continued_values": padded.continued_values,
            "size": padded.size,
            "grid_range": [start, stop],
        }
    }


class LoadedRun(NamedTuple):
    """A finished or interrupted run reloaded from its directory.

    Attributes:
        config: the run's configuration.
        scenario: its scenario.
        approx_layers: 1-based approximated weight matrices.
        dataset: its dataset.
        model: the ONN holding the *projected* parameters of the last checkpoint.
        apply_fn: pure ``apply_fn(params, x) -> y``.
        params: projected parameters (``nnx.State``).
        epoch: epochs completed at that checkpoint.
    """

    config: TrainConfig
    scenario: Scenario
    approx_layers: tuple[int, ...]
    dataset: Dataset
    model: ONN
    apply_fn: ONNApply
    params: Any
    epoch: int


def _config_from_record(record: dict) -> TrainConfig:
    """The config of a checkpoint record.

    An unregistered scenario name is restored from the scenario stored beside it.
    """
    if not isinstance(record.get("config"), dict):
        raise CheckpointError(
            "the checkpoint's record holds no configuration: it was written by another "
            "version of optinc-jax or is not an optinc run"
        )
    document = dict(record["config"])
    scenario = document.get("scenario")
    if isinstance(scenario, str) and scenario not in SCENARIOS and "scenario" in record:
        document["scenario"] = scenario_from_json(record["scenario"])
    try:
        return TrainConfig.from_json(document)
    except ValueError as error:
        raise CheckpointError(f"the run's configuration cannot be restored: {error}") from None


def load_run(workdir: str | Path, *, dataset: Dataset | None = None) -> LoadedRun:
    """Reloads a run directory written by :func:`train_onn` (its latest checkpoint).

    Args:
        workdir: the run directory.
        dataset: the dataset the run was trained on, if it was not the scenario's grid.

    Returns:
        The :class:`LoadedRun`, parameters projected as they were evaluated.

    Raises:
        CheckpointError: if the directory holds no readable checkpoint, or the run used a
            custom dataset and none is given.
    """
    directory = Path(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint in {directory}")
    checkpointer = TrainCheckpointer(directory)
    try:
        if checkpointer.latest_epoch() is None:
            raise CheckpointError(f"no checkpoint in {directory}")
        record = checkpointer.restore_record()
        config = _config_from_record(record)
        if dataset is None and record.get("dataset", {}).get("kind") == "custom":
            raise CheckpointError(
                f"the run in {workdir} was trained on a custom dataset "
                f"({record['dataset']['repr']}); pass it as dataset="
            )
        setup = build_training(config, dataset)
        saved, epoch, _ = checkpointer.restore(_saved_tree(config, setup.initial_state, None))
        state = saved[0] if config.restore_best else saved
    finally:
        checkpointer.close()
    params = _hardware_params(config, setup.approx_layers, epoch, state.params)
    nnx.update(setup.model, params)
    return LoadedRun(
        config,
        setup.scenario,
        setup.approx_layers,
        setup.dataset,
        setup.model,
        setup.apply_fn,
        params,
        epoch,
    )


def _stored_result(workdir: Path, config: TrainConfig, epoch: int) -> dict | None:
    """The ``result.json`` of this config at this epoch, if it was written."""
    path = workdir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("config") != config.to_json() or record.get("epochs") != epoch:
        return None
    return record


def train_onn(
    config: TrainConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    mesh: Mesh | None = None,
    dataset: Dataset | None = None,
    compile_ahead: bool = True,
) -> TrainResult:
    """Trains, evaluates and records one OptINC ONN.

    Args:
        config: the run's configuration.
        workdir: run directory; receives ``checkpoints/``, ``result.json`` and
            ``training.png``.
        resume: continue from the latest checkpoint in ``workdir`` (its config must equal
            ``config``); without a checkpoint the run starts fresh. A finished run (stopped
            at 100 % or at its last epoch, ``result.json`` written) returns its stored
            result without training or evaluating again.
        progress: show a progress bar on stderr.
        on_epoch_end: called as ``on_epoch_end(epoch, history)`` after each epoch (after
            any checkpoint of that epoch is written).
        mesh: optional device mesh with a ``"data"`` axis: data-parallel training (batch
            sharded, parameters replicated) and sharded evaluation. ``batch_size`` must be
            divisible by the axis size. The trajectory equals the one-device run up to
            float reassociation in the gradient sum.
        dataset: the training and evaluation set; ``None`` for the scenario's exhaustive
            grid. Any :class:`~optinc_jax.encoding.dataset.Dataset` plugs in.
        compile_ahead: a fresh run without a mesh compiles its programs on a second
            thread: its first epoch while the initial parameters are computed (in a
            directory without a ``checkpoints`` folder and without balanced draws), what
            follows it (projection, scoring, the stage-2 epoch) while the first epochs
            run; the result is the same either way (``False``: all on this thread, when
            they are first needed). The wait for the first epoch's compilation counts as
            training time (``train_seconds``).

    Returns:
        The :class:`TrainResult`.

    Raises:
        CheckpointError: if ``workdir`` holds checkpoints and ``resume`` is false, or they
            belong to another configuration, or are corrupt, or a checkpoint cannot be
            written (disk full: the previous checkpoint is kept, ``resume`` continues).
        ValueError: if the mesh lacks a ``"data"`` axis or does not divide the batch, the
            dataset does not fit the scenario, or the run cannot fit in memory (checked
            before the run directory is created).
        RunDirectoryBusy: if another process is training in ``workdir``.
        RunDirectoryUnwritable: if ``workdir`` cannot be created or written (checked
            before training starts).
        TrainingDiverged: if the loss or a parameter becomes NaN or infinite; the last
            finite checkpoint is kept and ``result.json`` records the divergence.
    """
    workdir = Path(workdir)
    if mesh is not None:
        if DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh axes {mesh.axis_names} lack the {DATA_AXIS!r} axis")
        if config.batch_size % mesh.shape[DATA_AXIS]:
            raise ValueError(
                f"batch_size {config.batch_size} is not divisible by the "
                f"{mesh.shape[DATA_AXIS]} devices of the mesh's {DATA_AXIS!r} axis"
            )
    shapes = build_training(config, dataset, abstract=True)
    footprint = training_footprint(
        shapes.scenario.layers,
        bits=shapes.dataset.bits,
        dataset_size=shapes.train_dataset.size,
        batch_size=config.batch_size,
        steps_per_epoch=shapes.steps_per_epoch,
        eval_chunk_size=min(
            config.eval_chunk_size or default_chunk_size(), shapes.train_dataset.size
        ),
        permutation_limit=PERMUTATION_LIMIT,
    )
    require_fits_memory(
        footprint, f"scenario {shapes.scenario.name} with batch size {config.batch_size}"
    )
    with run_directory_lock(workdir):
        ahead = None
        # A run directory without checkpoints trains from its first epoch: its programs
        # compile on a second thread while this one computes the initial parameters (a
        # balanced draw's classes, known only from the data, wait for the run).
        fresh = not (workdir / CHECKPOINT_DIR).exists()
        if compile_ahead and mesh is None and fresh and config.balance_fraction == 0:
            ahead = _compile_ahead(config, shapes, None, first_epoch=True)
        setup = build_training(config, dataset)
        return _train_locked(
            config, workdir, setup, resume, progress, on_epoch_end, mesh, compile_ahead, ahead
        )


def _train_locked(
    config: TrainConfig,
    workdir: Path,
    setup: TrainingSetup,
    resume: bool,
    progress: bool,
    on_epoch_end: Callable[[int, dict], None] | None,
    mesh: Mesh | None,
    compile_ahead: bool,
    ahead: list[tuple[int, concurrent.futures.Future]] | None,
) -> TrainResult:
    """The body of :func:`train_onn`, run while holding the run directory's lock.

    ``ahead``: the programs being compiled since the set-up (:func:`_compile_ahead` with
    ``first_epoch``), or ``None``: then a fresh one-device run starts compiling ahead here.
    """
    scenario, approx_layers, dataset = setup.scenario, setup.approx_layers, setup.dataset
    apply_fn, steps = setup.apply_fn, setup.steps_per_epoch
    state = setup.initial_state
    config_json = config.to_json()
    history = {"loss": [], "eval_epoch": [], "accuracy": [], "switch_epoch": config.switch_epoch}
    checkpointer = TrainCheckpointer(workdir / CHECKPOINT_DIR)
    start_epoch, train_seconds, done, first_full = 0, 0.0, False, None
    hard = None
    # with restore_best: the scored network with the fewest wrong inputs so far, its epoch
    # and count (a copy: the epochs donate the state's buffers)
    best_params, best_scored = None, None
    try:
        if checkpointer.latest_epoch() is not None:
            if not resume:
                raise CheckpointError(
                    f"{workdir} already holds checkpoints; pass resume=True (--resume) to continue"
                )
            saved, start_epoch, record = checkpointer.restore(_saved_tree(config, state, None))
            state = saved
            if config.restore_best:
                state, best_params = saved
                best_scored = record.get("best_scored")
                if best_scored is None:
                    best_params = None
            missing = sorted(set(_RECORD_KEYS) - set(record))
            if missing:
                raise CheckpointError(
                    f"the checkpoint in {workdir} lacks {missing} in its record: it was written "
                    "by another version of optinc-jax; start a new run directory"
                )
            if record["config"] != config_json:
                raise CheckpointError(
                    f"checkpoint in {workdir} was written with config {record['config']}, "
                    f"not {config_json}"
                )
            history, train_seconds = record["history"], record["train_seconds"]
            done = record["stopped_at_full_accuracy"]
            first_full = record.get("first_full_accuracy")
            stored = _stored_result(workdir, config, start_epoch)
            if stored is not None and (done or start_epoch >= config.epochs):
                params = _hardware_params(config, approx_layers, start_epoch, state.params)
                return TrainResult(
                    EvaluationResult.from_json(stored), params, apply_fn, start_epoch, stored
                )
        if mesh is not None:
            state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
            if best_params is not None:
                best_params = jax.device_put(best_params, NamedSharding(mesh, PartitionSpec()))
        # The dataset's samples grouped by target, once per run that trains, for the
        # balanced draws and the balanced finishing (neither a reloaded run nor a finished
        # one returned above needs them).
        classes = target_classes(dataset) if config.finish_balance else None
        draw_classes = None
        if config.balance_fraction > 0:
            reuse = classes is not None and setup.train_dataset is dataset
            draw_classes = classes if reuse else target_classes(setup.train_dataset)

        epoch, evaluation = start_epoch, None
        if config.focus_fraction > 0 and start_epoch > 0:
            # Rescored from the restored parameters (a checkpoint falls on an evaluation):
            # a resumed run draws what the uninterrupted one drew. A fresh run samples
            # uniformly until its first evaluation.
            hard, _ = _score_hard_samples(config, setup, start_epoch, state.params)
        if ahead is None:
            ahead = []
            if compile_ahead and mesh is None and start_epoch == 0:
                ahead = _compile_ahead(config, setup, draw_classes, first_epoch=False)
        bar = _progress_bar(config.epochs, start_epoch, progress, scenario.name)
        # the wait for the first epoch's compilation is training time (what the set-up
        # did not overlap)
        tic = time.perf_counter()
        ahead = _await_compiled(ahead, epoch)
        seed_key = jax.random.key(config.seed)
        train_seconds += time.perf_counter() - tic
        while epoch < config.epochs and not done:
            tic = time.perf_counter()
            stage = 1 if epoch < config.switch_epoch else 2
            leak = config.leak_at(epoch)
            state, loss = train_epoch(
                state,
                jax.random.fold_in(seed_key, epoch),
                apply_fn=apply_fn,
                dataset=setup.train_dataset,
                config=config,
                stage=stage,
                steps=steps,
                mesh=mesh,
                hard=hard,
                classes=draw_classes,
                leak=None if leak is None else jnp.float32(leak),
            )
            epoch += 1
            # what the next steps run is compiled (or compiling) on the second thread: wait
            # for it rather than compile it twice
            ahead = _await_compiled(ahead, epoch)
            loss = float(loss)
            finite = math.isfinite(loss) and bool(_all_finite(state.params))
            if finite and epoch <= config.revive_until:
                state = _revive(config, setup, epoch, state, history, mesh)
            if finite and projection_due(config, epoch):
                projected = config.conditioned_layers(epoch)
                state = state._replace(params=_project(config, projected, state.params))
                finite = bool(_all_finite(state.params))
            if not finite:
                bar.close()
                _stop_diverged(workdir, config_json, epoch, loss, history, checkpointer)
            history["loss"].append(loss)
            if epoch == config.epochs and best_params is not None:
                state = _restore_best(
                    config, setup, epoch, state, history, best_params, best_scored
                )
            if epoch == config.epochs and config.finish_rounds:
                state = _finish_at_end(config, setup, epoch, state, history, mesh, classes)
            # a network the finishing brought to 100 % is not refit (nothing left to fix)
            finished_full = history.get("finish", {}).get("wrong_after") == 0
            if epoch == config.epochs and config.refit_iterations and not finished_full:
                state = _refit_at_end(config, setup, epoch, state, history, mesh)
            if config.evaluation_due(epoch):
                margin = 0.0
                scoring = mesh is None or config.focus_fraction > 0 or config.stop_margin > 0
                if scoring and epoch < config.epochs:
                    # One pass scores every input (the focused draw's hard set) and counts
                    # the right ones exactly; the error histogram is evaluated at the end
                    # (the last epoch's evaluation is that full one).
                    scored, diagnostics = _score_hard_samples(config, setup, epoch, state.params)
                    hard = scored if config.focus_fraction > 0 else None
                    correct, margin = diagnostics.pop("correct"), diagnostics["min_margin"]
                    history.setdefault("scored_epoch", []).append(epoch)
                    for name, value in diagnostics.items():
                        history.setdefault(name, []).append(value)
                    evaluation = None
                else:
                    evaluation = evaluate_exhaustive(
                        apply_fn,
                        _hardware_params(config, approx_layers, epoch, state.params),
                        dataset,
                        chunk_size=config.eval_chunk_size,
                        mesh=mesh,
                        data_axis=DATA_AXIS,
                    )
                    correct = evaluation.correct
                history["eval_epoch"].append(epoch)
                history["accuracy"].append(correct / dataset.size)
                full = correct == dataset.size
                if full and first_full is None:
                    first_full = {
                        "epoch": epoch,
                        "train_seconds": train_seconds + time.perf_counter() - tic,
                    }
                done = config.stop_at_full_accuracy and full and margin >= config.stop_margin
                if config.restore_best and epoch < config.epochs:
                    if best_scored is None or correct >= best_scored["correct"]:
                        # what was scored: the hardware's parameters (a copy, the next
                        # epoch donates the state's buffers); the latest among equals
                        best_scored = {"epoch": epoch, "correct": int(correct)}
                        best_params = jax.tree.map(
                            jnp.copy, _hardware_params(config, approx_layers, epoch, state.params)
                        )
            train_seconds += time.perf_counter() - tic
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs or done:
                record = {
                    "config": config_json,
                    "scenario": scenario.to_json(),
                    "dataset": _dataset_description(dataset),
                    "history": history,
                    "train_seconds": train_seconds,
                    "stopped_at_full_accuracy": done,
                    "first_full_accuracy": first_full,
                }
                if config.restore_best:
                    record["best_scored"] = best_scored
                checkpointer.save(epoch, _saved_tree(config, state, best_params), record)
            bar.update(1)
            bar.set_postfix(
                stage=stage,
                loss=f"{loss:.3g}",
                acc=f"{history['accuracy'][-1]:.6f}" if history["accuracy"] else "-",
            )
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
        bar.close()
    finally:
        checkpointer.close()

    final_params = _hardware_params(config, approx_layers, epoch, state.params)
    if evaluation is None or history["eval_epoch"][-1] != epoch:
        evaluation = evaluate_exhaustive(
            apply_fn,
            final_params,
            dataset,
            chunk_size=config.eval_chunk_size,
            mesh=mesh,
            data_axis=DATA_AXIS,
        )
    record = {
        "status": "finished",
        **evaluation_record(scenario, approx_layers, evaluation),
        "epochs": epoch,
        "steps_per_epoch": steps,
        "train_seconds": train_seconds,
        "first_full_accuracy": first_full,
        "device": jax.devices()[0].platform,
        # the CPU model matters: XLA's float rounding, and so the epochs, differ between CPUs
        "machine": machine_description(),
        "devices": 1 if mesh is None else mesh.size,
        "dataset": _dataset_description(dataset),
        **_training_set_description(setup),
        "config": config_json,
        "history": history,
        "alive_units": _alive_units(config, setup, epoch, final_params),
        "approx_residual": _approx_residual(config, approx_layers, final_params),
    }
    if config.noise_epochs > 0:
        record["noise_finetune"] = _noise_finetune(
            config, workdir, setup, final_params, evaluation, progress
        )
    write_json_atomically(workdir / RESULT_FILE, record)
    plot_training_curve(
        history,
        workdir / "training.png",
        f"{scenario.name} ({scenario.layers_string}, approx {list(approx_layers) or 'none'}): "
        f"{evaluation.accuracy:.5%} after {epoch} epochs",
    )
    return TrainResult(evaluation, final_params, apply_fn, epoch, record)


def _on_one_device_at_end(
    name: str,
    solve: Callable[[Any], tuple[Any, dict]],
    config: TrainConfig,
    setup: TrainingSetup,
    epoch: int,
    state: TrainState,
    history: dict,
    mesh: Mesh | None,
) -> TrainState:
    """Applies an end-of-run solve to the hardware network on one device.

    ``solve(params) -> (new_params, record)`` gets the hardware parameters (what the
    evaluation sees) fetched to the host: a mesh run's replicated copies would partition
    its small solves over every device (on 8 virtual CPU devices the refit hung). The new
    parameters replace the state's, which the last checkpoint then holds, re-replicated on
    a mesh; ``history[name]`` gets the record and the seconds.
    """
    tic = time.perf_counter()
    params = jax.device_get(_hardware_params(config, setup.approx_layers, epoch, state.params))
    new_params, record = solve(params)
    history[name] = {**record, "seconds": time.perf_counter() - tic}
    state = state._replace(params=new_params)
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    return state


_ACTIVITY_STREAM = 2**31
"""Folded into the seed's key before the epoch for the unit-activity draws: far from any
epoch number, so these keys never equal a training epoch's."""


def _activity_key(config: TrainConfig, epoch: int) -> jax.Array:
    seed_key = jax.random.key(config.seed)
    return jax.random.fold_in(jax.random.fold_in(seed_key, _ACTIVITY_STREAM), epoch)


def _alive_units(config: TrainConfig, setup: TrainingSetup, epoch: int, params) -> list[int]:
    """Per hidden layer, the units alive after ``epoch``.

    A unit is alive when it fires on some input of the draw of
    :func:`~optinc_jax.learning.revival.dataset_unit_activity`.
    """
    key = _activity_key(config, epoch)
    counts = dataset_unit_activity(setup.apply_fn, params, setup.dataset, key)
    # counted on the host: eager jnp reductions compiled one program per layer width
    return [int(np.count_nonzero(np.asarray(count))) for count in counts]


def _revive(
    config: TrainConfig,
    setup: TrainingSetup,
    epoch: int,
    state: TrainState,
    history: dict,
    mesh: Mesh | None,
) -> TrainState:
    """Re-initializes the hidden units dead on a draw of the dataset after ``epoch``.

    The draw's key follows from the seed and the epoch, so a resumed run revives what the
    uninterrupted one did. ``history["revived_units"]`` gets one list per revival: the
    units re-initialized in each hidden layer.
    """
    key = _activity_key(config, epoch)
    counts = dataset_unit_activity(setup.apply_fn, state.params, setup.dataset, key)
    dead = [count == 0 for count in counts]
    history.setdefault("revived_epoch", []).append(epoch)
    history.setdefault("revived_units", []).append([int(jnp.sum(mask)) for mask in dead])
    if not any(history["revived_units"][-1]):
        return state
    params, masks = revive_dead_units(state.params, dead, jax.random.fold_in(key, 1))
    tx = make_optimizer(config, config.epochs * setup.steps_per_epoch)
    state = TrainState(params, revived_optimizer_state(tx, state.opt_state, masks))
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    return state


def _saved_tree(config: TrainConfig, state: TrainState, best_params):
    """The pytree a checkpoint holds: the state, with ``restore_best`` also the best network.

    ``best_params`` ``None`` (no epoch scored yet, or a restore's template) stands for the
    state's own parameters, which have the best network's structure.
    """
    if not config.restore_best:
        return state
    return state, state.params if best_params is None else best_params


def _restore_best(
    config: TrainConfig,
    setup: TrainingSetup,
    epoch: int,
    state: TrainState,
    history: dict,
    best_params,
    best_scored: dict,
) -> TrainState:
    """The state with the best scored network's parameters, if the last one is worse.

    ``restore_best``; not in the paper. The last epoch's network is scored (one pass over
    the dataset) and replaced by the best earlier one only if that has fewer wrong inputs.
    What happened goes to ``history["restore_best"]``: the best epoch, its wrong inputs,
    the last network's, and whether it was restored.
    """
    _, diagnostics = _score_hard_samples(config, setup, epoch, state.params)
    size = setup.dataset.size
    last_wrong = size - int(diagnostics["correct"])
    best_wrong = size - int(best_scored["correct"])
    restored = best_wrong < last_wrong
    history["restore_best"] = {
        "best_epoch": best_scored["epoch"],
        "best_wrong": best_wrong,
        "last_wrong": last_wrong,
        "restored": restored,
    }
    return state._replace(params=best_params) if restored else state


def _refit_at_end(
    config: TrainConfig,
    setup: TrainingSetup,
    epoch: int,
    state: TrainState,
    history: dict,
    mesh: Mesh | None,
) -> TrainState:
    """The last matrix re-solved after the last epoch (``refit_iterations``); not in the paper.

    The last matrix is free, so the refit row replaces the trained one; its counts go to
    ``history["refit"]``.
    """

    def solve(params):
        refit = refit_last_layer(
            setup.apply_fn,
            params,
            setup.dataset,
            tolerance=config.refit_tolerance,
            iterations=config.refit_iterations,
        )
        return with_last_layer(state.params, refit.kernel, refit.bias), refit.to_json()

    return _on_one_device_at_end("refit", solve, config, setup, epoch, state, history, mesh)


def _finish_at_end(
    config: TrainConfig,
    setup: TrainingSetup,
    epoch: int,
    state: TrainState,
    history: dict,
    mesh: Mesh | None,
    classes: TargetClasses | None,
) -> TrainState:
    """The hinge finishing after the last epoch (``finish_rounds``); not in the paper.

    Every matrix of the state is replaced by the finished ones (the approximated ones stay
    projected); its counts go to ``history["finish"]``. It is deterministic (whole-dataset
    gradients, no draw), so a resumed run finishes to the same network. ``classes`` (the
    dataset's samples grouped by target) weigh every target equally with
    ``finish_balance``.
    """

    def solve(params):
        finish = finish_on_hard_set(
            setup.apply_fn,
            params,
            setup.dataset,
            approx_layers=setup.approx_layers,
            rounds=config.finish_rounds,
            steps=config.finish_steps,
            learning_rate=config.finish_learning_rate,
            tolerance=config.finish_tolerance,
            slack=config.finish_slack,
            side=config.approx_side,
            refine_steps=config.refine_steps,
            chunk_size=config.eval_chunk_size or default_chunk_size(),
            classes=classes if config.finish_balance else None,
            backtrack=config.finish_backtrack,
        )
        return finish.params, finish.to_json()

    return _on_one_device_at_end("finish", solve, config, setup, epoch, state, history, mesh)


def _noise_finetune(
    config: TrainConfig,
    workdir: Path,
    setup: TrainingSetup,
    params,
    evaluation: EvaluationResult,
    progress: bool,
) -> dict[str, Any]:
    """Deploy the trained network, fine-tune it under noise, save it; the record's entry.

    Only a network at projected 100 % is fine-tuned; otherwise the entry says why not.
    """
    finetune = NoiseFinetuneConfig(
        noise_model=config.noise_model,
        strength=config.noise_strength,
        epochs=config.noise_epochs,
        learning_rate=config.noise_learning_rate,
        seed=config.seed,
    )
    if evaluation.correct != evaluation.total:
        return {
            "status": "skipped",
            "reason": f"training ended at {evaluation.accuracy:.6%}, not at projected 100 %",
            "config": finetune.to_json(),
        }
    arrays = export_arrays(
        setup.model,
        params,
        bits=setup.scenario.bits,
        servers=setup.scenario.servers,
        approx_layers=setup.approx_layers,
    )
    circuit = compile_circuit(arrays, approx_side=config.approx_side)
    tuned, history = finetune_circuit(circuit, finetune, dataset=setup.dataset, progress=progress)
    save_circuit(workdir / FINETUNED_CIRCUIT_FILE, tuned)
    return {"status": "finished", "circuit": FINETUNED_CIRCUIT_FILE, **finetune_summary(history)}


def _stop_diverged(
    workdir: Path,
    config_json: dict,
    epoch: int,
    loss: float,
    history: dict,
    checkpointer: TrainCheckpointer,
) -> None:
    """Record a divergence in ``result.json`` (no accuracy in it) and raise.

    The non-finite state is not checkpointed; the last checkpoint on disk stays the last
    finite one.

    Raises:
        TrainingDiverged: always.
    """
    last = checkpointer.latest_epoch()
    what = f"loss {loss}" if not math.isfinite(loss) else "a parameter became non-finite"
    message = (
        f"training diverged at epoch {epoch} ({what}); "
        + (
            f"the last finite checkpoint (epoch {last}) is kept in {workdir}"
            if last is not None
            else "no checkpoint had been written yet"
        )
        + "; lower the learning rate and start a new run"
    )
    write_json_atomically(
        workdir / RESULT_FILE,
        {
            "status": "diverged",
            "error": message,
            "diverged_at_epoch": epoch,
            "last_checkpoint_epoch": last,
            "config": config_json,
            "history": history,
        },
    )
    raise TrainingDiverged(message, epoch, last)


def _progress_bar(total: int, initial: int, enabled: bool, name: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=f"train {name}",
        unit="epoch",
        dynamic_ncols=True,
        leave=True,
        miniters=1,
        smoothing=0.1,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
    )
