"""Target-balanced sampling: every average the servers can receive drawn equally often.

Not in the paper (it samples its training set uniformly). The exhaustive grid is very
unevenly spread over its targets: the inputs are sums of N server symbols, so an average
near 0 or near the top is reached by a handful of input combinations and one in the middle
by thousands (8b8s: 390,625 inputs over 256 averages, the rarest class with a single
input). Measured on the final 8b8s networks (README, "Training recipe"), every remaining
error sits on a rare extreme average: 505-524 wrong inputs on 16-20 of the 2,041 distinct
input sums (the preset's: targets 3-24 and 235-255), a median of 21.5 inputs per sum
against 231 over the grid. A uniform draw visits
such an input once per epoch among hundreds of thousands of others. Measured (item 13):
drawing a quarter of every batch balanced ended 8b8s at 2,514 wrong against 524, its
errors still on the ends; the balanced finishing ended where the plain one did.

* :func:`target_classes` sorts a dataset's sample indices by target once, on the host at
  set-up (one pass over the data), into a fixed-shape :class:`TargetClasses`.
* :func:`draw_balanced` draws indices on device: a class uniformly among the targets
  present, then a member of it uniformly, so every target is equally likely.
* :func:`class_weights` weighs samples so that every target weighs the same in a sum over
  the whole dataset (the hinge finishing's, ``TrainConfig.finish_balance``).

The trainer draws a share ``TrainConfig.balance_fraction`` of every minibatch this way
(:func:`~optinc_jax.learning.focus.draw_epoch_indices`).
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.validation import require_int

__all__ = [
    "TargetClasses",
    "class_weights",
    "draw_balanced",
    "target_classes",
]


class TargetClasses(NamedTuple):
    """A dataset's sample indices grouped by target, as a fixed-shape on-device pytree.

    Attributes:
        order: ``[S]`` int32 sample indices sorted by target (stable: increasing index
            within a target).
        starts: ``[C]`` int32 position in ``order`` of each present target's first sample.
        counts: ``[C]`` int32 samples of each present target (all ``>= 1``).
        targets: ``[C]`` int32 the present targets, increasing.
    """

    order: jax.Array
    starts: jax.Array
    counts: jax.Array
    targets: jax.Array


@partial(jax.jit, static_argnames=("dataset", "chunk_size", "chunks"))
def _all_targets(dataset: Dataset, *, chunk_size: int, chunks: int) -> jax.Array:
    """``[chunks * chunk_size]`` targets; indices past the dataset read as its last."""

    def chunk(start):
        indices = jnp.minimum(start + jnp.arange(chunk_size, dtype=jnp.int32), dataset.size - 1)
        return dataset.samples(indices).target

    starts = jnp.arange(chunks, dtype=jnp.int32) * chunk_size
    return jax.lax.map(chunk, starts).reshape(-1)


def target_classes(dataset: Dataset, *, chunk_size: int = 65_536) -> TargetClasses:
    """Groups every sample index of ``dataset`` by its target.

    One jitted pass computes the targets (``lax.map`` over chunks, memory bounded by one
    chunk); the sort runs once on the host (set-up, not in a training loop).

    Args:
        dataset: any :class:`~optinc_jax.encoding.dataset.Dataset`.
        chunk_size: samples per chunk of the pass, ``>= 1``.

    Returns:
        The :class:`TargetClasses`.

    Examples:
        >>> from optinc_jax.encoding.dataset import make_dataset_spec
        >>> classes = target_classes(make_dataset_spec(4, 2, inputs=2))
        >>> int(classes.counts.sum()), len(classes.targets)
        (49, 16)
    """
    chunk_size = require_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, dataset.size)
    chunks = -(-dataset.size // chunk_size)
    targets = np.asarray(_all_targets(dataset, chunk_size=chunk_size, chunks=chunks))
    targets = targets[: dataset.size]
    order = np.argsort(targets, kind="stable").astype(np.int32)
    present, starts, counts = np.unique(targets[order], return_index=True, return_counts=True)
    return TargetClasses(
        jnp.asarray(order),
        jnp.asarray(starts, dtype=jnp.int32),
        jnp.asarray(counts, dtype=jnp.int32),
        jnp.asarray(present, dtype=jnp.int32),
    )


def draw_balanced(key: jax.Array, classes: TargetClasses, shape: tuple[int, ...]) -> jax.Array:
    """Sample indices with every present target equally likely (jittable).

    Args:
        key: PRNG key.
        classes: the :class:`TargetClasses` of the dataset.
        shape: shape of the draw.

    Returns:
        ``shape`` int32 sample indices: a target uniform over ``classes.targets``, then a
        sample uniform over that target's samples.
    """
    key_class, key_member = jax.random.split(key)
    which = jax.random.randint(key_class, shape, 0, classes.counts.shape[0], dtype=jnp.int32)
    member = jax.random.randint(key_member, shape, 0, classes.counts[which], dtype=jnp.int32)
    return classes.order[classes.starts[which] + member]


def class_weights(classes: TargetClasses, target: jax.Array) -> jax.Array:
    """Per-sample weights that give every present target the same total weight.

    Args:
        classes: the :class:`TargetClasses` of the dataset.
        target: ``[...]`` int32 targets, each one of ``classes.targets``.

    Returns:
        ``[...]`` float32 ``S / (C * n_t)`` for a target with ``n_t`` of the ``S``
        samples and ``C`` present targets: the weights of a whole dataset sum to ``S``,
        as equal weights do, and each target's to ``S / C``.

    Examples:
        >>> from optinc_jax.encoding.dataset import make_dataset_spec
        >>> classes = target_classes(make_dataset_spec(4, 2, inputs=2))
        >>> int(classes.counts[0])  # target 0 has 2 of the 49 inputs, 16 targets
        2
        >>> float(class_weights(classes, jnp.asarray(0)))  # 49 / (16 * 2)
        1.53125
    """
    position = jnp.searchsorted(classes.targets, target)
    size = classes.order.shape[0]
    count = classes.counts[position].astype(jnp.float32)
    return size / (classes.counts.shape[0] * count)
