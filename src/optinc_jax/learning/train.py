"""Hardware-aware training of the OptINC ONN (SPEC section 4).

``run(config, workdir)`` trains the scenario's ONN on its exhaustive dataset with the
two-stage loss, Adam and a learning-rate schedule. Each epoch is one jitted ``lax.scan``
over minibatches whose sample indices are drawn on device and whose samples are generated
on device, so nothing crosses between host and device inside an epoch. The selected
weight matrices are projected onto diagonal x unitary blocks every ``project_every``
epochs, between the jitted epochs (an SVD inside ``lax.cond`` inside the epoch's
``lax.scan`` deadlocked XLA's CPU runtime for 8b8s); every evaluation measures the
*projected* network
exhaustively, training stops at the first projected 100 %, and the final parameters are
always projected. Checkpoints are written atomically and a killed run resumes from the
last one with the same result it would have reached uninterrupted.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optinc_jax.encoding.dataset import DatasetSpec, dataset_samples, make_dataset_spec
from optinc_jax.learning.checkpoint import CheckpointError, TrainCheckpointer
from optinc_jax.learning.evaluate import EvaluationResult, evaluate_exhaustive
from optinc_jax.learning.loss import STAGE2_LOSSES, symbol_weights, two_stage_loss
from optinc_jax.learning.onn import ONN, build_onn, onn_apply_fn
from optinc_jax.learning.projection import projection_diag_unitary
from optinc_jax.photonics.area import onn_area, parse_approx
from optinc_jax.scenarios import Scenario, get_scenario

__all__ = [
    "LoadedRun",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "evaluation_record",
    "load_run",
    "resolve_scenario",
    "run",
]

SCHEDULES = ("onecycle", "cosine", "constant")

# Up to this size an epoch is a random permutation of the dataset; above it minibatch
# indices are drawn uniformly with replacement (a permutation of 13.8 M would dominate).
PERMUTATION_LIMIT = 1 << 22

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (all of it lands in ``result.json``).

    The defaults train the default scenario (8b4s, every matrix approximated) to a
    projected 100 % on a 2-core CPU: measured at epoch 90 (seed 0) and 100 (seed 1) of
    130, about 0.6 s per epoch. Batch 128 beat 256 and 64 there (256: 99.98 % after 150
    epochs; 64: 99.93 % after 60); a 100-epoch schedule reached 100 % only at epoch 96.

    Attributes:
        scenario: registered scenario name (see :mod:`optinc_jax.scenarios`).
        approx: weight matrices to approximate: ``None`` for the scenario's own selection,
            ``"none"``, ``"all"``, or a list such as ``"4-6"`` / ``"2,3"``.
        epochs: maximum number of epochs.
        batch_size: samples per optimizer step.
        steps_per_epoch: optimizer steps per epoch; ``None`` for one pass over the data.
        learning_rate: peak learning rate of Adam.
        schedule: ``"onecycle"`` (warm-up then cosine to ~0), ``"cosine"`` (warm-up
            cosine decay) or ``"constant"``.
        warmup_fraction: share of all steps spent warming up.
        switch_epoch: E1, first epoch of loss stage 2.
        stage2: stage-2 loss, one of :data:`optinc_jax.learning.loss.STAGE2_LOSSES`.
        symbol_weight_base: stage-1 weights ``w_k`` proportional to ``base**k``. SPEC's
            default is 2; measured on 8b4s (no approximation, 40 epochs) base 1 reached
            99.8 %, base 0.5 97.6 %, base 2 88.7 %, base 4 31.9 %: the least significant
            symbol is the hard one, so the default is uniform weights.
        project_every: projection period in epochs.
        project_start: epoch before which no projection happens.
        approx_side: ``"left"`` (``diag(d) U``) or ``"right"`` (``U diag(d)``).
        refine_steps: alternating least-squares refinements of each projection.
        eval_every: exhaustive evaluation period in epochs (also at the last epoch).
        eval_chunk_size: samples per evaluation chunk (``None``: the backend's default,
            :func:`optinc_jax.learning.evaluate.default_chunk_size`).
        checkpoint_every: checkpoint period in epochs (also at the end).
        stop_at_full_accuracy: stop at the first evaluation with projected 100 %.
        seed: initialization and sampling seed.
    """

    scenario: str = "8b4s"
    approx: str | None = None
    epochs: int = 130
    batch_size: int = 128
    steps_per_epoch: int | None = None
    learning_rate: float = 3e-3
    schedule: str = "onecycle"
    warmup_fraction: float = 0.2
    switch_epoch: int = 80
    stage2: str = "hybrid"
    symbol_weight_base: float = 1.0
    project_every: int = 1
    project_start: int = 0
    approx_side: str = "left"
    refine_steps: int = 0
    eval_every: int = 1
    eval_chunk_size: int | None = None
    checkpoint_every: int = 10
    stop_at_full_accuracy: bool = True
    seed: int = 0

    def __post_init__(self):
        """Validates the fields."""
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "project_every": self.project_every,
            "eval_every": self.eval_every,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.eval_chunk_size is not None and self.eval_chunk_size < 1:
            raise ValueError(f"eval_chunk_size must be >= 1 or None, got {self.eval_chunk_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.stage2 not in STAGE2_LOSSES:
            raise ValueError(f"stage2 must be one of {STAGE2_LOSSES}, got {self.stage2!r}")
        if self.approx_side not in ("left", "right"):
            raise ValueError(f"approx_side must be 'left' or 'right', got {self.approx_side!r}")
        if self.switch_epoch < 0 or self.project_start < 0 or self.refine_steps < 0:
            raise ValueError("switch_epoch, project_start and refine_steps must be >= 0")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


class TrainState(NamedTuple):
    """Parameters and optimizer state; the pytree that is checkpointed."""

    params: Any
    opt_state: Any


class TrainResult(NamedTuple):
    """What :func:`run` returns (and writes to ``workdir/result.json``).

    Attributes:
        evaluation: exhaustive evaluation of the final (projected) network.
        params: final parameters (``nnx.State``).
        apply_fn: pure ``apply_fn(params, x) -> y``.
        epochs: epochs trained in total (resumed runs included).
        record: the JSON document written to ``result.json``.
    """

    evaluation: EvaluationResult
    params: Any
    apply_fn: Callable
    epochs: int
    record: dict


def resolve_scenario(config: TrainConfig) -> tuple[Scenario, tuple[int, ...]]:
    """The scenario and the 1-based approximated matrices a config selects.

    Args:
        config: the run's configuration.

    Returns:
        ``(scenario, approx_layers)``.

    Raises:
        ValueError: on an unknown scenario or a malformed ``approx``.
    """
    scenario = get_scenario(config.scenario)
    if config.approx is None:
        return scenario, scenario.approx
    return scenario, tuple(parse_approx(config.approx, scenario.num_matrices))


def _learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = int(config.warmup_fraction * total_steps)
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, max(warmup, 1), max(total_steps, warmup + 1)
        )
    return optax.cosine_onecycle_schedule(
        max(total_steps, 1), config.learning_rate, pct_start=max(config.warmup_fraction, 1e-3)
    )


def _steps_per_epoch(config: TrainConfig, spec: DatasetSpec) -> int:
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    return max(spec.size // config.batch_size, 1)


@partial(
    jax.jit,
    static_argnames=("apply_fn", "tx", "spec", "stage", "steps", "config", "mesh"),
    donate_argnames=("state",),
)
def _train_epoch(
    state: TrainState,
    key: jax.Array,
    *,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    spec: DatasetSpec,
    stage: int,
    steps: int,
    config: TrainConfig,
    mesh: Mesh | None,
) -> tuple[TrainState, jax.Array]:
    """One epoch as a scan over ``steps`` minibatches; returns the new state, mean loss.

    With a mesh, every minibatch is split over its ``"data"`` axis while the parameters
    stay replicated: XLA averages the gradients with an all-reduce, and the optimizer
    update (projection included) is one logical, replicated computation per step.
    """
    draws = steps * config.batch_size
    if spec.size <= PERMUTATION_LIMIT and draws <= spec.size:
        indices = jax.random.permutation(key, spec.size)[:draws]
    else:
        indices = jax.random.randint(key, (draws,), 0, spec.size, dtype=jnp.int32)
    weights = symbol_weights(spec.bits // 2, base=config.symbol_weight_base)

    def step(state: TrainState, batch_indices: jax.Array):
        samples = dataset_samples(spec, batch_indices)

        def loss_fn(params):
            y = apply_fn(params, samples.inputs)
            return two_stage_loss(
                y,
                samples.target_symbols,
                samples.target,
                stage=stage,
                bits=spec.bits,
                weights=weights,
                stage2=config.stage2,
            )

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    indices = indices.reshape(steps, config.batch_size)
    if mesh is not None:
        indices = jax.lax.with_sharding_constraint(
            indices, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
        )
    state, losses = jax.lax.scan(step, state, indices)
    return state, jnp.mean(losses)


def _projection_due(config: TrainConfig, epoch: int) -> bool:
    """Whether the parameters are projected after ``epoch`` (1-based) epochs."""
    done = epoch - config.project_start
    return done >= config.project_every and done % config.project_every == 0


def _hardware_params(config: TrainConfig, epoch: int, params, project: Callable):
    """The parameters as mapped to hardware after ``epoch`` epochs.

    After a projection epoch they already are projected and are returned as they are, so
    that training, ``result.json``, :func:`load_run` and the export all see the very same
    arrays (projecting twice agrees only up to float rounding); otherwise they are
    projected now.
    """
    return params if _projection_due(config, epoch) else project(params)


def _plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = range(1, len(history["loss"]) + 1)
    ax_loss.semilogy(epochs, history["loss"], color="tab:blue")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss (stage 1 | stage 2)")
    ax_loss.axvline(history["switch_epoch"] + 0.5, color="gray", ls=":", lw=1)
    errors = [max(1.0 - acc, 1e-9) for acc in history["accuracy"]]
    ax_acc.semilogy(history["eval_epoch"], errors, "o-", color="tab:red", ms=3)
    ax_acc.set(
        xlabel="epoch",
        ylabel="1 - accuracy (projected network)",
        title="exhaustive error rate (1e-9 = exact)",
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _RunSetup(NamedTuple):
    scenario: Scenario
    approx_layers: tuple[int, ...]
    spec: DatasetSpec
    steps_per_epoch: int
    model: ONN
    apply_fn: Callable
    tx: optax.GradientTransformation
    project: Callable
    initial_state: TrainState


def _setup(config: TrainConfig) -> _RunSetup:
    scenario, approx_layers = resolve_scenario(config)
    spec = make_dataset_spec(scenario.bits, scenario.servers, scenario.inputs)
    steps = _steps_per_epoch(config, spec)
    model = build_onn(scenario.layers, symbols_per_input=spec.symbols_per_input, seed=config.seed)
    apply_fn, params = onn_apply_fn(model)
    project = partial(
        projection_diag_unitary,
        approx_layers=approx_layers,
        side=config.approx_side,
        refine_steps=config.refine_steps,
    )
    tx = optax.adam(_learning_rate_schedule(config, config.epochs * steps))
    return _RunSetup(
        scenario,
        approx_layers,
        spec,
        steps,
        model,
        apply_fn,
        tx,
        project,
        TrainState(params, tx.init(params)),
    )


class LoadedRun(NamedTuple):
    """A finished or interrupted run reloaded from its directory.

    Attributes:
        config: the run's configuration.
        scenario: its scenario.
        approx_layers: 1-based approximated weight matrices.
        spec: the exhaustive dataset's spec.
        model: the ONN holding the *projected* parameters of the last checkpoint.
        apply_fn: pure ``apply_fn(params, x) -> y``.
        params: projected parameters (``nnx.State``).
        epoch: epochs completed at that checkpoint.
    """

    config: TrainConfig
    scenario: Scenario
    approx_layers: tuple[int, ...]
    spec: DatasetSpec
    model: ONN
    apply_fn: Callable
    params: Any
    epoch: int


def load_run(workdir: str | Path) -> LoadedRun:
    """Reloads a run directory written by :func:`run` (its latest checkpoint).

    Args:
        workdir: the run directory.

    Returns:
        The :class:`LoadedRun`, parameters projected as they were evaluated.

    Raises:
        CheckpointError: if the directory holds no readable checkpoint.
    """
    checkpointer = TrainCheckpointer(Path(workdir) / "checkpoints")
    try:
        if checkpointer.latest_epoch() is None:
            raise CheckpointError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
        probe = checkpointer.restore_record()
        config = TrainConfig(**probe["config"])
        setup = _setup(config)
        state, epoch, _ = checkpointer.restore(setup.initial_state)
    finally:
        checkpointer.close()
    params = _hardware_params(config, epoch, state.params, jax.jit(setup.project))
    nnx.update(setup.model, params)
    return LoadedRun(
        config,
        setup.scenario,
        setup.approx_layers,
        setup.spec,
        setup.model,
        setup.apply_fn,
        params,
        epoch,
    )


def run(
    config: TrainConfig,
    workdir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Trains, evaluates and records one OptINC ONN.

    Args:
        config: the run's configuration.
        workdir: run directory; receives ``checkpoints/``, ``result.json`` and
            ``training.png``.
        resume: continue from the latest checkpoint in ``workdir`` (its config must equal
            ``config``); without a checkpoint the run starts fresh.
        progress: show a progress bar on stderr.
        on_epoch_end: called as ``on_epoch_end(epoch, history)`` after each epoch (after
            any checkpoint of that epoch is written).
        mesh: optional device mesh with a ``"data"`` axis: data-parallel training (batch
            sharded, parameters replicated) and sharded evaluation. ``batch_size`` must be
            divisible by the axis size. The trajectory equals the one-device run up to
            float reassociation in the gradient sum.

    Returns:
        The :class:`TrainResult`.

    Raises:
        CheckpointError: if ``workdir`` holds checkpoints and ``resume`` is false, or they
            belong to another configuration, or are corrupt.
        ValueError: if the mesh lacks a ``"data"`` axis or does not divide the batch.
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
    setup = _setup(config)
    scenario, approx_layers, spec = setup.scenario, setup.approx_layers, setup.spec
    apply_fn, steps = setup.apply_fn, setup.steps_per_epoch
    state = setup.initial_state
    config_dict = dataclasses.asdict(config)
    history = {"loss": [], "eval_epoch": [], "accuracy": [], "switch_epoch": config.switch_epoch}
    checkpointer = TrainCheckpointer(workdir / "checkpoints")
    start_epoch, train_seconds, done = 0, 0.0, False
    if checkpointer.latest_epoch() is not None:
        if not resume:
            raise CheckpointError(
                f"{workdir} already holds checkpoints; pass resume=True (--resume) to continue"
            )
        state, start_epoch, record = checkpointer.restore(state)
        if record["config"] != config_dict:
            raise CheckpointError(
                f"checkpoint in {workdir} was written with config {record['config']}, "
                f"not {config_dict}"
            )
        history, train_seconds = record["history"], record["train_seconds"]
        done = record["stopped_at_full_accuracy"]
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))

    project_jit = jax.jit(setup.project)
    base_key = jax.random.key(config.seed)
    epoch, evaluation = start_epoch, None
    bar = _progress_bar(config.epochs, start_epoch, progress, scenario.name)
    while epoch < config.epochs and not done:
        tic = time.perf_counter()
        stage = 1 if epoch < config.switch_epoch else 2
        state, loss = _train_epoch(
            state,
            jax.random.fold_in(base_key, epoch),
            apply_fn=apply_fn,
            tx=setup.tx,
            spec=spec,
            stage=stage,
            steps=steps,
            config=config,
            mesh=mesh,
        )
        epoch += 1
        history["loss"].append(float(loss))
        if _projection_due(config, epoch):
            state = state._replace(params=project_jit(state.params))
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            evaluation = evaluate_exhaustive(
                apply_fn,
                _hardware_params(config, epoch, state.params, project_jit),
                spec,
                chunk_size=config.eval_chunk_size,
                mesh=mesh,
                data_axis=DATA_AXIS,
            )
            history["eval_epoch"].append(epoch)
            history["accuracy"].append(evaluation.accuracy)
            done = config.stop_at_full_accuracy and evaluation.correct == evaluation.total
        train_seconds += time.perf_counter() - tic
        if epoch % config.checkpoint_every == 0 or epoch == config.epochs or done:
            checkpointer.save(
                epoch,
                state,
                {
                    "config": config_dict,
                    "history": history,
                    "train_seconds": train_seconds,
                    "stopped_at_full_accuracy": done,
                },
            )
        bar.update(1)
        bar.set_postfix(
            stage=stage,
            loss=f"{float(loss):.3g}",
            acc=f"{history['accuracy'][-1]:.6f}" if history["accuracy"] else "-",
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    bar.close()
    checkpointer.close()

    final_params = _hardware_params(config, epoch, state.params, project_jit)
    if evaluation is None or history["eval_epoch"][-1] != epoch:
        evaluation = evaluate_exhaustive(
            apply_fn,
            final_params,
            spec,
            chunk_size=config.eval_chunk_size,
            mesh=mesh,
            data_axis=DATA_AXIS,
        )
    record = {
        **evaluation_record(scenario, approx_layers, evaluation),
        "epochs": epoch,
        "steps_per_epoch": steps,
        "train_seconds": train_seconds,
        "device": jax.devices()[0].platform,
        "devices": 1 if mesh is None else mesh.size,
        "config": config_dict,
        "history": history,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    _write_json_atomically(workdir / "result.json", record)
    _plot_history(
        history,
        workdir / "training.png",
        f"{scenario.name} ({scenario.layers_string}, approx {list(approx_layers) or 'none'}): "
        f"{evaluation.accuracy:.5%} after {epoch} epochs",
    )
    return TrainResult(evaluation, final_params, apply_fn, epoch, record)


def evaluation_record(
    scenario: Scenario, approx_layers: tuple[int, ...], evaluation: EvaluationResult
) -> dict:
    """JSON-ready description of an evaluated network: scenario, accuracy, errors, area.

    Args:
        scenario: the scenario.
        approx_layers: 1-based approximated weight matrices.
        evaluation: its exhaustive evaluation.

    Returns:
        ``scenario, bits, servers, layers, approx``, the fields of
        :meth:`EvaluationResult.to_json` and ``area_ratio, mzis, mzis_full``.
    """
    area = onn_area(scenario.layers, approx_layers)
    return {
        "scenario": scenario.name,
        "bits": scenario.bits,
        "servers": scenario.servers,
        "layers": scenario.layers_string,
        "approx": list(approx_layers),
        **evaluation.to_json(),
        "area_ratio": area.area_ratio,
        "mzis": area.mzis,
        "mzis_full": area.mzis_full,
    }


def _write_json_atomically(path: Path, document: dict) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)


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
