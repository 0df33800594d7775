"""Focused sampling: find the inputs the network gets wrong or nearly wrong, draw them more.

Not in the paper (it samples its training set uniformly). The exhaustive grid is small
enough to score every input after every epoch, so the trainer knows exactly which inputs
are wrong or within a small decision margin of a receiver threshold; a fixed share of
every minibatch is then drawn from those "hard" inputs. On the larger scenarios the last
wrong inputs are a few thousand of 390,625 (8b8s), which uniform sampling visits once per
epoch among hundreds of thousands of correct ones.

* :func:`symbol_margins` is the signed distance of each output amplitude to the nearest
  receiver threshold that would change its decision (positive: decided right).
* :func:`find_hard_samples` scores a whole dataset in one jitted pass (``lax.map`` over
  chunks, memory bounded by one chunk) and returns a :class:`HardSet` plus diagnostics
  (the exact count of right samples, per-symbol wrong counts, the hard count, the
  smallest margin). With focus on, the trainer reads its accuracy from this pass instead
  of a second one (an 8b8s pass costs 2.5 s of a 21 s epoch on 2 cores).
* :func:`draw_epoch_indices` draws an epoch's minibatch indices on device: a share
  ``focus_fraction`` of every minibatch from the hard set, the rest a permutation of the
  data (uniform with replacement above the permutation limit).
"""

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from optinc_jax.encoding.dataset import INT32_MAX, Dataset
from optinc_jax.encoding.units import receiver
from optinc_jax.learning.balance import TargetClasses, draw_balanced
from optinc_jax.validation import require_int, require_real

__all__ = [
    "HardSet",
    "batch_share",
    "compile_hard_samples",
    "draw_epoch_indices",
    "find_hard_samples",
    "focus_draws",
    "symbol_margins",
]


_BALANCE_STREAM = 2**31 - 1
"""Folded into an epoch's key for its target-balanced draws (leaves the other draws as
they were without balance)."""

TOP_LEVEL = 3
"""Highest PAM4 level (levels are 0, 1, 2, 3 in symbol units)."""


class HardSet(NamedTuple):
    """The inputs to oversample, as a fixed-shape on-device pytree.

    Attributes:
        indices: ``[S]`` int32 sample indices; the first ``count`` are the hard inputs in
            increasing order, the rest are padding (0).
        count: scalar int32, number of hard inputs (0: none, the draw falls back to
            uniform).
    """

    indices: jax.Array
    count: jax.Array


def symbol_margins(y: ArrayLike, target_symbols: ArrayLike) -> jax.Array:
    """Signed decision margin of every output amplitude, in symbol units.

    The receiver decides level ``s`` on ``(s - 0.5, s + 0.5)``, the end levels extending to
    infinity (:func:`~optinc_jax.encoding.units.receiver`). The margin is the distance from
    ``y`` to the nearest edge of its target's interval: positive when the symbol is decided
    right, negative when wrong; a non-finite amplitude gets ``-inf``.

    Args:
        y: ``[..., K]`` raw amplitudes.
        target_symbols: ``[..., K]`` integer target symbols in ``{0, .., 3}``.

    Returns:
        ``[..., K]`` margins (dtype of ``y``).

    Examples:
        >>> symbol_margins(jnp.array([0.25, 1.25, 3.75, -5.0]), jnp.array([1, 1, 3, 0]))
        Array([-0.25,  0.25,  1.25,  5.5 ], dtype=float32)
    """
    y = jnp.asarray(y)
    y = y if jnp.issubdtype(y.dtype, jnp.floating) else y.astype(jnp.float32)
    target = jnp.asarray(target_symbols).astype(y.dtype)
    above = jnp.where(target > 0, y - (target - 0.5), jnp.inf)
    below = jnp.where(target < TOP_LEVEL, (target + 0.5) - y, jnp.inf)
    return jnp.where(jnp.isfinite(y), jnp.minimum(above, below), -jnp.inf)


@partial(jax.jit, static_argnames=("apply_fn", "dataset", "chunk_size", "judged"))
def _score(params, margin, *, apply_fn, dataset: Dataset, chunk_size: int, judged: tuple[int, int]):
    """Margins of every sample and the hard set, in one pass; counts over ``judged``."""
    chunks = -(-dataset.size // chunk_size)
    starts = jnp.arange(chunks, dtype=jnp.int32) * chunk_size

    def chunk(start):
        indices = start + jnp.arange(chunk_size, dtype=jnp.int32)
        valid = indices < dataset.size
        samples = dataset.samples(jnp.where(valid, indices, 0))
        y = apply_fn(params, samples.inputs)
        margins = jnp.where(valid[:, None], symbol_margins(y, samples.target_symbols), jnp.inf)
        counted = (indices >= judged[0]) & (indices < judged[1])
        # Right exactly when the receiver decides every symbol right (digits in 0..3 are
        # unique), as the exhaustive evaluation counts it.
        right = counted & jnp.all(receiver(y) == samples.target_symbols, axis=-1)
        return (
            jnp.min(margins, axis=-1),
            jnp.sum((margins <= 0) & counted[:, None], axis=0, dtype=jnp.int32),
            jnp.sum(right, dtype=jnp.int32),
        )

    sample_margin, wrong, right = jax.lax.map(chunk, starts)
    sample_margin = sample_margin.reshape(-1)[: dataset.size]
    hard = sample_margin < margin
    (indices,) = jnp.nonzero(hard, size=dataset.size, fill_value=0)
    diagnostics = {
        "correct": jnp.sum(right),
        "symbol_errors": jnp.sum(wrong, axis=0),
        "hard_count": jnp.sum(hard, dtype=jnp.int32),
        "min_margin": jnp.min(sample_margin[judged[0] : judged[1]]),
    }
    return HardSet(indices.astype(jnp.int32), diagnostics["hard_count"]), diagnostics


def _score_arguments(apply_fn, dataset: Dataset, margin, chunk_size, judged) -> dict[str, Any]:
    """The checked arguments of :func:`_score` but the parameters (:func:`find_hard_samples`)."""
    margin = require_real("margin", margin, low=0.0, high=0.5, low_inclusive=False)
    judged = (0, dataset.size) if judged is None else tuple(judged)
    if len(judged) != 2:
        raise ValueError(f"judged must be a range (start, stop), got {judged}")
    start, stop = (require_int("judged", bound, 0, dataset.size) for bound in judged)
    if start >= stop:
        raise ValueError(f"judged must be a non-empty range (start, stop), got {judged}")
    chunk_size = require_int("chunk_size", min(chunk_size, dataset.size), 1)
    if -(-dataset.size // chunk_size) * chunk_size - 1 > INT32_MAX:
        raise ValueError(
            f"chunk_size {chunk_size} for {dataset.size} samples would index beyond int32"
        )
    return {
        "margin": jnp.float32(margin),
        "apply_fn": apply_fn,
        "dataset": dataset,
        "chunk_size": chunk_size,
        "judged": (start, stop),
    }


def compile_hard_samples(
    apply_fn,
    params,
    dataset: Dataset,
    *,
    margin: float,
    chunk_size: int = 1 << 12,
    judged: tuple[int, int] | None = None,
) -> None:
    """Compiles the pass of :func:`find_hard_samples` for these arguments, without running it.

    A later call of :func:`find_hard_samples` with parameters of the same shapes, dtypes
    and shardings and the same other arguments reuses the compilation (the trainer
    compiles it on a second thread while its first epoch runs).

    Args:
        apply_fn: as for :func:`find_hard_samples`.
        params: the parameters, or their ``jax.ShapeDtypeStruct`` pytree.
        dataset: as for :func:`find_hard_samples`.
        margin: as for :func:`find_hard_samples`.
        chunk_size: as for :func:`find_hard_samples`.
        judged: as for :func:`find_hard_samples`.

    Raises:
        ValueError: as :func:`find_hard_samples`.
    """
    _score.lower(
        params, **_score_arguments(apply_fn, dataset, margin, chunk_size, judged)
    ).compile()


def find_hard_samples(
    apply_fn,
    params,
    dataset: Dataset,
    *,
    margin: float,
    chunk_size: int = 1 << 12,
    judged: tuple[int, int] | None = None,
) -> tuple[HardSet, dict[str, Any]]:
    """Every input whose smallest symbol margin is below ``margin`` (wrong ones included).

    Args:
        apply_fn: hashable ``apply_fn(params, x [batch, I]) -> y [batch, K]``.
        params: the network's parameters (the projected ones the evaluation scores).
        dataset: any :class:`~optinc_jax.encoding.dataset.Dataset`.
        margin: threshold in symbol units, in ``(0, 0.5]``; an input is hard when some
            symbol of it is decided wrong or lies within ``margin`` of a threshold.
        chunk_size: samples per step of the pass (memory: one chunk's activations).
        judged: ``(start, stop)``, the index range that ``correct``, ``symbol_errors``
            and ``min_margin`` describe (the real grid inside a padded training set,
            :meth:`~optinc_jax.encoding.padded_grid.PaddedGrid.grid_range`); ``None``
            (the default) for the whole dataset. The hard set always covers the whole
            dataset.

    Returns:
        ``(hard_set, diagnostics)``: the :class:`HardSet` (on device) and a dict of host
        values: ``correct`` (int, samples decoded right: the exhaustive evaluation's
        count), ``symbol_errors``  (list of ``K`` counts of wrongly decided symbols, least
        significant first; a margin of exactly 0 counts as wrong), ``hard_count`` (int)
        and ``min_margin`` (float, the smallest sample margin; negative while any input
        is wrong).

    Raises:
        ValueError: if ``margin`` is outside ``(0, 0.5]``, ``chunk_size < 1`` or
            ``judged`` is not a non-empty range inside the dataset.
    """
    hard, diagnostics = _score(
        params, **_score_arguments(apply_fn, dataset, margin, chunk_size, judged)
    )
    diagnostics = jax.device_get(diagnostics)
    return hard, {
        "correct": int(diagnostics["correct"]),
        "symbol_errors": [int(count) for count in diagnostics["symbol_errors"]],
        "hard_count": int(diagnostics["hard_count"]),
        "min_margin": float(diagnostics["min_margin"]),
    }


def focus_draws(batch_size: int, focus_fraction: float) -> int:
    """Samples of every minibatch drawn from the hard set: ``round(fraction x batch)``.

    Args:
        batch_size: samples per minibatch, ``>= 1``.
        focus_fraction: share in ``[0, 1)``.

    Returns:
        The count, in ``[0, batch_size)``.

    Examples:
        >>> focus_draws(128, 0.25)
        32
    """
    return batch_share(batch_size, focus_fraction, name="focus_fraction")


def batch_share(batch_size: int, fraction: float, *, name: str) -> int:
    """Samples of every minibatch that a share ``fraction`` stands for.

    Args:
        batch_size: samples per minibatch, ``>= 1``.
        fraction: share in ``[0, 1]``.
        name: the share's name, for the error message.

    Returns:
        ``round(fraction x batch_size)``, at most ``batch_size - 1``.

    Examples:
        >>> batch_share(256, 0.25, name="balance_fraction")
        64
    """
    batch_size = require_int("batch_size", batch_size, 1)
    fraction = require_real(name, fraction, low=0.0, high=1.0)
    return min(round(fraction * batch_size), batch_size - 1)


def draw_epoch_indices(
    key: jax.Array,
    *,
    size: int,
    steps: int,
    batch_size: int,
    permutation_limit: int,
    focus: int = 0,
    hard: HardSet | None = None,
    balance: int = 0,
    classes: TargetClasses | None = None,
) -> jax.Array:
    """An epoch's minibatch indices, drawn on device (jittable; sizes are static).

    Without focus (``focus == 0`` or no ``hard``) this is the plain draw: a permutation of
    the data cut to ``steps x batch_size`` when the dataset is at most
    ``permutation_limit`` and covers the draws, otherwise uniform with replacement. With
    focus, the last ``focus`` columns of every minibatch are uniform draws from the hard
    set (uniform over the whole data while it is empty) and the other columns follow the
    plain rule. With balance, the ``balance`` columns before those are drawn with every
    target equally likely (:func:`~optinc_jax.learning.balance.draw_balanced`), from a key
    folded off the epoch's: the plain columns are the same permutation cut shorter, the
    hard columns the same as without balance.

    Args:
        key: PRNG key of the epoch.
        size: dataset size ``S``.
        steps: minibatches in the epoch.
        batch_size: samples per minibatch.
        permutation_limit: largest dataset that is permuted.
        focus: hard draws per minibatch (:func:`focus_draws`), in ``[0, batch_size)``.
        hard: the :class:`HardSet`; ``None`` for no focus.
        balance: target-balanced draws per minibatch (:func:`batch_share`); ``focus +
            balance`` must be below ``batch_size``.
        classes: the dataset's :class:`~optinc_jax.learning.balance.TargetClasses`;
            ``None`` for no balance.

    Returns:
        ``[steps, batch_size]`` int32 indices in ``[0, S)``.
    """
    focus = focus if hard is not None else 0
    balance = balance if classes is not None else 0
    if focus + balance >= batch_size:
        raise ValueError(
            f"focus ({focus}) + balance ({balance}) draws must leave room in a minibatch of "
            f"{batch_size}"
        )
    plain = batch_size - focus - balance
    draws = steps * plain
    # Without focus the epoch key draws the permutation itself (the plain draw of earlier
    # versions, so their runs reproduce); with focus it is split three ways.
    key_plain, key_hard, key_empty = jax.random.split(key, 3) if focus else (key, None, None)
    if size <= permutation_limit and draws <= size:
        indices = jax.random.permutation(key_plain, size)[:draws].astype(jnp.int32)
    else:
        indices = jax.random.randint(key_plain, (draws,), 0, size, dtype=jnp.int32)
    indices = indices.reshape(steps, plain)
    if balance:
        key_balance = jax.random.fold_in(key, _BALANCE_STREAM)
        balanced = draw_balanced(key_balance, classes, (steps, balance))
        indices = jnp.concatenate([indices, balanced], axis=1)
    if focus == 0:
        return indices
    position = jax.random.randint(
        key_hard, (steps, focus), 0, jnp.maximum(hard.count, 1), dtype=jnp.int32
    )
    anywhere = jax.random.randint(key_empty, (steps, focus), 0, size, dtype=jnp.int32)
    focused = jnp.where(hard.count > 0, hard.indices[position], anywhere)
    return jnp.concatenate([indices, focused], axis=1)
