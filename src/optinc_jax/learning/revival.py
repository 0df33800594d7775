"""Dead ReLU units: counting them and re-initializing them between epochs.

A hidden unit is *dead* over a set of inputs when its ReLU outputs zero on every one of
them: no gradient reaches its incoming weights, and its outgoing weights only multiply
zeros. Measured on 8b8s (README, "Training recipe"), Adam's warm-up kills most units of the
wide layers within the first 20 epochs (the 512-wide layer: 501 alive at initialization,
104 after epoch 20), and the final networks compute with a fifth of their width.

:func:`revive_dead_units` re-initializes them in the manner of ReDo (Sokar et al., 2023,
"The Dormant Neuron Phenomenon in Deep Reinforcement Learning"; not in the OptINC paper):
the incoming weights of a dead unit are drawn again from the layer's initializer (LeCun
normal, as :class:`flax.nnx.Linear` draws them), its bias set to zero, its outgoing weights
set to zero, and the optimizer moments of all three set to zero. A unit that was dead on
the inputs that decided it contributed nothing there, so the network's outputs on them
are unchanged; the revived unit fires on part of them again and its outgoing weights get a
gradient from the next step on. The trainer calls it between jitted epochs, before the
projection (``TrainConfig.revive_until``).

Measured (README, "Training recipe", item 12): it does not help. On 8b8s the revived units
die again within the next epoch (441 of 512 revived after epoch 13), and on a 30-epoch
8b4s schedule every revival left more wrong inputs (1,202 without, 2,012 to 15,828 with).
"""

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.learning.onn import ONNApply, layer_leaf

__all__ = [
    "ACTIVITY_SAMPLES",
    "dataset_unit_activity",
    "hidden_unit_activity",
    "revive_dead_units",
    "revived_optimizer_state",
]

ACTIVITY_SAMPLES = 32_768
"""Inputs drawn (uniformly, fresh each time) to decide which units are alive, when the
dataset is larger; a smaller dataset is used whole."""


@partial(jax.jit, static_argnames=("apply_fn",))
def hidden_unit_activity(apply_fn: ONNApply, params: nnx.State, x: jax.Array) -> list[jax.Array]:
    """How many inputs each hidden unit fires on (ReLU output > 0).

    Args:
        apply_fn: the ONN's pure forward (its graph definition is used).
        params: the ONN's parameters.
        x: preprocessed inputs ``[n, I]``.

    Returns:
        One ``[h_l]`` int32 array of counts in ``[0, n]`` per hidden layer; a unit whose
        count is 0 is dead on ``x``.
    """
    model = nnx.merge(apply_fn.graphdef, params)
    return [jnp.sum(hidden > 0, axis=0, dtype=jnp.int32) for hidden in model.hidden_activations(x)]


def _unit_masks(params, dead: Sequence[jax.Array]):
    """Per parameter leaf, True where the entry belongs to a dead unit (same tree)."""
    dead = [jnp.asarray(mask, dtype=bool) for mask in dead]

    def leaf_mask(path, leaf):
        where = layer_leaf(path)
        mask = jnp.zeros(leaf.shape, dtype=bool)
        if where is None:
            return mask
        index, name = where
        if index < len(dead):  # the unit's own incoming weights and bias
            mask = mask | (dead[index][None, :] if name == "kernel" else dead[index])
        if name == "kernel" and 0 < index <= len(dead):  # its outgoing weights
            mask = mask | dead[index - 1][:, None]
        return mask

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def revive_dead_units(params, dead: Sequence[jax.Array], key: jax.Array):
    """Re-initializes the dead hidden units of an ONN.

    Args:
        params: the ONN's parameters (``nnx.State`` or its pure dict) with
            ``layers/<i>/{kernel [in, out], bias [out]}``.
        dead: one bool ``[h_l]`` mask per hidden layer (``len(dead)`` = matrices - 1), True
            for a unit to revive.
        key: PRNG key of the new incoming weights.

    Returns:
        ``(params, masks)``: the new parameters (same tree) and, per leaf, the bool mask of
        the entries that were re-set (for :func:`revived_optimizer_state`). A dead unit's
        kernel column is redrawn from LeCun normal over the layer's fan-in, its bias and
        its row of the next kernel are zero; every other entry is returned unchanged.

    Raises:
        ValueError: when the masks do not match the hidden layers' widths.
    """
    leaves = [
        (layer_leaf(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    kernels = {where[0]: leaf for where, leaf in leaves if where and where[1] == "kernel"}
    widths = [kernels[index].shape[1] for index in sorted(kernels)][:-1]
    shapes = [tuple(jnp.shape(mask)) for mask in dead]
    if shapes != [(width,) for width in widths]:
        raise ValueError(
            f"dead must hold one mask per hidden layer of widths {widths}, got shapes {shapes}"
        )
    masks = _unit_masks(params, dead)
    initializer = jax.nn.initializers.lecun_normal()

    def revive(path, leaf, mask):
        where = layer_leaf(path)
        fresh = jnp.zeros_like(leaf)
        if where is not None and where[1] == "kernel" and where[0] < len(dead):
            layer_key = jax.random.fold_in(key, where[0])
            drawn = initializer(layer_key, leaf.shape, leaf.dtype)
            drawn_entries = jnp.asarray(dead[where[0]], bool)[None, :]
            if where[0] > 0:  # what a dead unit of the layer below sends in stays 0
                drawn_entries = drawn_entries & ~jnp.asarray(dead[where[0] - 1], bool)[:, None]
            fresh = jnp.where(drawn_entries, drawn, fresh)
        return jnp.where(mask, fresh, leaf)

    return jax.tree_util.tree_map_with_path(revive, params, masks), masks


def revived_optimizer_state(tx: optax.GradientTransformation, opt_state, masks):
    """The optimizer state with the moments of re-set entries zeroed.

    Args:
        tx: the optimizer the state belongs to (to find its parameter-shaped trees).
        opt_state: its state.
        masks: the per-leaf masks :func:`revive_dead_units` returned.

    Returns:
        The state with every parameter-shaped tree (Adam's first and second moments) zero
        where the mask is True; counters and other fields unchanged.
    """
    return optax.tree_utils.tree_map_params(
        tx, lambda moment, mask: jnp.where(mask, jnp.zeros_like(moment), moment), opt_state, masks
    )


@partial(jax.jit, static_argnames=("apply_fn", "dataset"))
def dataset_unit_activity(
    apply_fn: ONNApply, params: nnx.State, dataset: Dataset, key: jax.Array
) -> list[jax.Array]:
    """:func:`hidden_unit_activity` over a dataset, or a uniform draw from a large one.

    Args:
        apply_fn: the ONN's pure forward.
        params: its parameters.
        dataset: the inputs; used whole up to :data:`ACTIVITY_SAMPLES` samples, else that
            many indices are drawn uniformly (with replacement) with ``key``.
        key: PRNG key of the draw (unused for a small dataset).

    Returns:
        One ``[h_l]`` int32 count per hidden layer, over the inputs used.
    """
    if dataset.size <= ACTIVITY_SAMPLES:
        indices = jnp.arange(dataset.size, dtype=jnp.int32)
    else:
        indices = jax.random.randint(key, (ACTIVITY_SAMPLES,), 0, dataset.size, jnp.int32)
    return hidden_unit_activity(apply_fn, params, dataset.samples(indices).inputs)
