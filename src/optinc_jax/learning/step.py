"""One training epoch as a single jitted computation.

:func:`train_epoch` draws the epoch's sample indices on device, generates the samples on
device from any :class:`~optinc_jax.encoding.dataset.Dataset`, and runs the optimizer
steps as one ``lax.scan``: nothing crosses between host and device inside an epoch. Its
static arguments are values (the :class:`~optinc_jax.learning.onn.ONNApply` of the
architecture, the dataset, the :class:`~optinc_jax.learning.config.TrainConfig`), and the
optimizer is built inside from the config, so equal runs share one compilation per stage.

The projection onto the hardware structure is *not* inside the epoch: an SVD inside
``lax.cond`` inside the epoch's ``lax.scan`` deadlocked XLA's CPU runtime (8b8s), so the
trainer projects between the jitted epochs.
"""

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.learning.balance import TargetClasses
from optinc_jax.learning.config import TrainConfig, make_optimizer
from optinc_jax.learning.focus import HardSet, batch_share, draw_epoch_indices, focus_draws
from optinc_jax.learning.loss import symbol_weights, two_stage_loss

__all__ = ["DATA_AXIS", "PERMUTATION_LIMIT", "TrainState", "train_epoch"]

DATA_AXIS = "data"
"""Name of the device-mesh axis that data-parallel training splits minibatches over."""

PERMUTATION_LIMIT = 1 << 22
"""Up to this dataset size an epoch is a random permutation of the data; above it the
minibatch indices are drawn uniformly with replacement (a permutation of 13.8 M samples
would dominate the epoch)."""


class TrainState(NamedTuple):
    """Parameters and optimizer state; the pytree that is checkpointed.

    Attributes:
        params: ONN parameters (``nnx.State``).
        opt_state: optax optimizer state.
    """

    params: Any
    opt_state: Any


@partial(
    jax.jit,
    static_argnames=("apply_fn", "dataset", "config", "stage", "steps", "mesh"),
    donate_argnames=("state",),
)
def train_epoch(
    state: TrainState,
    key: jax.Array,
    *,
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    dataset: Dataset,
    config: TrainConfig,
    stage: int,
    steps: int,
    mesh: Mesh | None = None,
    hard: HardSet | None = None,
    classes: TargetClasses | None = None,
    leak: jax.Array | None = None,
) -> tuple[TrainState, jax.Array]:
    """One epoch of ``steps`` minibatches of the two-stage loss; jitted, state donated.

    With a mesh, every minibatch is split over its ``"data"`` axis while the parameters
    stay replicated: XLA averages the gradients with an all-reduce, and the optimizer
    update is one logical, replicated computation per step.

    Args:
        state: parameters and optimizer state (donated: do not reuse it after the call).
        key: PRNG key of this epoch (the sample draw).
        apply_fn: hashable pure ``apply_fn(params, x [batch, I]) -> y [batch, K]``.
        dataset: any :class:`~optinc_jax.encoding.dataset.Dataset`.
        config: the run's configuration (batch size, losses, optimizer and schedule).
        stage: loss stage, 1 or 2.
        steps: optimizer steps in this epoch (the schedule spans ``config.epochs * steps``).
        mesh: optional device mesh with a ``"data"`` axis.
        hard: the inputs to oversample (:func:`~optinc_jax.learning.focus.find_hard_samples`);
            with ``config.focus_fraction > 0`` that share of every minibatch is drawn from
            them. ``None``: every sample is drawn by the plain rule.
        classes: the dataset's samples grouped by target
            (:func:`~optinc_jax.learning.balance.target_classes`); with
            ``config.balance_fraction > 0`` that share of every minibatch is drawn with
            every target equally likely. ``None``: no balanced draws.
        leak: this epoch's negative slope of the hidden activations
            (:meth:`TrainConfig.leak_at`), a traced scalar, so the annealing does not
            recompile; ``None``: the ONN's ReLU. ``apply_fn`` must then take ``leak``.

    Returns:
        ``(new_state, mean_loss)``.
    """
    tx = make_optimizer(config, config.epochs * steps, stage=stage)
    indices = draw_epoch_indices(
        key,
        size=dataset.size,
        steps=steps,
        batch_size=config.batch_size,
        permutation_limit=PERMUTATION_LIMIT,
        focus=focus_draws(config.batch_size, config.focus_fraction),
        hard=hard,
        balance=batch_share(config.batch_size, config.balance_fraction, name="balance_fraction"),
        classes=classes,
    )
    weights = symbol_weights(dataset.bits // 2, base=config.symbol_weight_base)

    def step(state: TrainState, batch_indices: jax.Array):
        samples = dataset.samples(batch_indices)

        def loss_fn(params):
            y = (
                apply_fn(params, samples.inputs)
                if leak is None
                else apply_fn(params, samples.inputs, leak)
            )
            return two_stage_loss(
                y,
                samples.target_symbols,
                samples.target,
                stage=stage,
                bits=dataset.bits,
                weights=weights,
                stage2=config.stage2,
                tolerance=config.tolerance_of(stage),
            )

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    if mesh is not None:
        indices = jax.lax.with_sharding_constraint(
            indices, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
        )
    state, losses = jax.lax.scan(step, state, indices)
    return state, jnp.mean(losses)
