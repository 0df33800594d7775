r"""Hinge finishing: every matrix trained on the exact gradient of the receiver hinge.

Not in the paper, which ends with its stochastic schedule. At the end of a schedule the
plain MSE no longer falls and every epoch reshuffles which inputs beside a threshold are
wrong (README, "Training recipe", item 7): a minibatch's gradient weighs the bulk of the
grid, where every input is right, as much as the few beside a cliff. The finishing
minimizes the squared receiver hinge over the *whole* dataset of ``S`` inputs,

    ``L(params) = (1/S) sum_s sum_k max(|y_sk - t_sk| - tolerance, 0)^2``

(one-sided at levels 0 and 3, :func:`~optinc_jax.learning.loss.receiver_hinge`), by Adam on
its exact gradient. Only the inputs past the tolerance have a gradient, so that gradient
needs the backward pass over them alone (about 9 % of the 8b8s grid at the end of its
preset). One **round**:

1. scores the whole dataset in one pass
   (:func:`~optinc_jax.learning.focus.find_hard_samples` with margin
   ``0.5 - tolerance + slack``): the inputs past the tolerance, plus those within
   ``slack`` of it, which the next steps may push past it;
2. takes ``steps`` Adam steps of ``L`` restricted to them (padded to a power of two, so a
   run compiles the step a few times, not once per round), each followed by the
   projection of the approximated matrices onto diagonal x unitary blocks. The projection
   runs in its own jitted call: with the SVD inside the gradient's computation XLA's CPU
   runtime hung on 8b8s.

The restricted gradient is the full one as long as no input outside the scored set crosses
the tolerance within a round; ``slack`` makes that likely, not certain. Every round's
scoring counts the wrong inputs exactly, and :func:`finish_on_hard_set` returns the scored
parameters with the fewest (the start included, the earlier among equals), so it never
returns a network with more wrong inputs than it was given.

With ``backtrack`` (a factor in ``(0, 1)``; not in the paper, 0 = off by default) the
constant step becomes a backtracking one: a round whose steps raised ``L`` (the exact
whole-dataset hinge, summed over the scored set, which holds every input past the tolerance)
is undone, and the next round steps again from the network it started from, with Adam's
moments reset and its step multiplied by the factor. A network a few inputs from 100 % can be
thrown far off by the constant step (Adam's first steps move every weight by about the
learning rate): one 8b8s seed-0 network went 15 -> 229 -> 1,307 wrong inputs in its first two
rounds (README, "Training recipe").

Measured on the 2-core CPU (README, "Training recipe", item 10): on the 8b8s network that
ended its schedule at 389 wrong inputs, 40 rounds of 5 steps at learning rate 1e-4 took it
to 279 (8 minutes, other jobs beside it), and the last-layer refit after it to 161, against
215 with the refit alone.
"""

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.learning.balance import TargetClasses, class_weights
from optinc_jax.learning.focus import find_hard_samples
from optinc_jax.learning.loss import receiver_hinge
from optinc_jax.learning.onn import ONNApply
from optinc_jax.learning.projection import projection_diag_unitary
from optinc_jax.validation import require_int, require_real

__all__ = ["FinishResult", "finish_on_hard_set"]

_SMALLEST_BUCKET = 1024
"""Fewest padded rows of a round's step; larger sets are padded to a power of two."""

_GRADIENT_CHUNK = 1 << 18
"""Default of the most hard rows whose gradient is taken at once (262,144: every 8b8s hard
set measured fits one chunk; for the 8b8s/16b4s widths a chunk's forward and backward hold
about 4.5 GB; larger sets are summed chunk by chunk)."""


class FinishResult(NamedTuple):
    """Outcome of :func:`finish_on_hard_set`.

    Attributes:
        params: the scored parameters with the fewest wrong inputs (projected where the
            scenario approximates; the given ones when no round improved on them).
        wrong_before: inputs decided wrongly by the given parameters.
        wrong_after: inputs decided wrongly by ``params`` (never more than before).
        best_round: the round whose parameters are returned (0: the given ones).
        wrong_by_round: wrong inputs at every scored round, the start first.
        hard_by_round: inputs scored as hard (trained on) at every scored round.
        symbol_errors_after: ``[K]`` wrongly decided symbols of ``params``, least
            significant first.
        learning_rate_by_round: Adam's step in every round that stepped (constant
            unless ``backtrack`` shrank it).
        hinge_by_round: ``L`` of every scored round that stepped, with ``backtrack``
            (empty without).
    """

    params: nnx.State
    wrong_before: int
    wrong_after: int
    best_round: int
    wrong_by_round: tuple[int, ...]
    hard_by_round: tuple[int, ...]
    symbol_errors_after: tuple[int, ...]
    learning_rate_by_round: tuple[float, ...] = ()
    hinge_by_round: tuple[float, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict (no parameters)."""
        return {
            "wrong_before": self.wrong_before,
            "wrong_after": self.wrong_after,
            "best_round": self.best_round,
            "wrong_by_round": list(self.wrong_by_round),
            "hard_by_round": list(self.hard_by_round),
            "symbol_errors_after": list(self.symbol_errors_after),
            "learning_rate_by_round": list(self.learning_rate_by_round),
            "hinge_by_round": list(self.hinge_by_round),
        }


@partial(
    jax.jit,
    static_argnames=("apply_fn", "dataset", "rows", "chunk", "tolerance"),
    donate_argnames=("params", "opt_state"),
)
def _finish_step(
    params,
    opt_state,
    hard_indices: jax.Array,
    hard_count: jax.Array,
    classes: TargetClasses | None,
    learning_rate: jax.Array,
    *,
    apply_fn: ONNApply,
    dataset: Dataset,
    rows: int,
    chunk: int,
    tolerance: float,
):
    """One Adam step of the whole-dataset hinge, its gradient taken over the hard rows.

    The rows are summed in chunks of ``chunk`` (one chunk's activations in memory at a
    time); ``learning_rate`` is a float32 scalar (a backtracked step compiles nothing new).
    """
    chunks = _chunked_rows(hard_indices, hard_count, rows, chunk)
    chunk_loss = partial(
        _chunk_hinge, classes=classes, apply_fn=apply_fn, dataset=dataset, tolerance=tolerance
    )

    def add_chunk(total, chunk_rows):
        grads = jax.grad(chunk_loss)(params, *chunk_rows)
        return jax.tree.map(jnp.add, total, grads), None

    grads, _ = jax.lax.scan(add_chunk, jax.tree.map(jnp.zeros_like, params), chunks)
    updates, opt_state = optax.adam(learning_rate).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@partial(jax.jit, static_argnames=("apply_fn", "dataset", "rows", "chunk", "tolerance"))
def _hard_set_hinge(
    params,
    hard_indices: jax.Array,
    hard_count: jax.Array,
    classes: TargetClasses | None,
    *,
    apply_fn: ONNApply,
    dataset: Dataset,
    rows: int,
    chunk: int,
    tolerance: float,
) -> jax.Array:
    """``L`` of :func:`_finish_step`, summed over the hard rows in chunks (a scalar)."""
    chunk_loss = partial(
        _chunk_hinge, classes=classes, apply_fn=apply_fn, dataset=dataset, tolerance=tolerance
    )

    def add_chunk(total, chunk_rows):
        return total + chunk_loss(params, *chunk_rows), None

    chunks = _chunked_rows(hard_indices, hard_count, rows, chunk)
    return jax.lax.scan(add_chunk, jnp.float32(0.0), chunks)[0]


def _bucket_rows(count: int, size: int) -> int:
    """Rows a step over ``count`` hard inputs is padded to (a power of two, or ``size``)."""
    return min(size, max(_SMALLEST_BUCKET, 1 << (count - 1).bit_length()))


def _chunked_rows(
    hard_indices: jax.Array, hard_count: jax.Array, rows: int, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """The first ``rows`` hard indices, padded to whole chunks, and which are hard.

    Returns ``([n, chunk], [n, chunk])``: the indices and whether each is one of the
    ``hard_count`` hard ones.
    """
    padded = -(-rows // chunk) * chunk
    indices = jnp.pad(hard_indices[:rows], (0, padded - rows)).reshape(-1, chunk)
    valid = (jnp.arange(padded) < hard_count).reshape(-1, chunk)
    return indices, valid


def _chunk_hinge(
    params,
    chunk_indices: jax.Array,
    chunk_valid: jax.Array,
    *,
    classes: TargetClasses | None,
    apply_fn: ONNApply,
    dataset: Dataset,
    tolerance: float,
) -> jax.Array:
    """One chunk's share of ``L``: its valid rows' squared hinge over the dataset's size."""
    samples = dataset.samples(chunk_indices)
    y = apply_fn(params, samples.inputs)
    per_input = jnp.sum(receiver_hinge(y, samples.target_symbols, tolerance) ** 2, axis=-1)
    if classes is not None:
        per_input = per_input * class_weights(classes, samples.target)
    return jnp.sum(jnp.where(chunk_valid, per_input, 0.0)) / dataset.size


def finish_on_hard_set(
    apply_fn: ONNApply,
    params: nnx.State,
    dataset: Dataset,
    *,
    approx_layers: tuple[int, ...] = (),
    rounds: int = 40,
    steps: int = 5,
    learning_rate: float = 1e-4,
    tolerance: float = 0.35,
    slack: float = 0.1,
    side: str = "left",
    refine_steps: int = 0,
    chunk_size: int = 4096,
    gradient_chunk: int = _GRADIENT_CHUNK,
    classes: TargetClasses | None = None,
    backtrack: float = 0.0,
) -> FinishResult:
    """Trains every matrix on the exact gradient of the dataset's receiver hinge.

    Args:
        apply_fn: the ONN's pure forward (:class:`~optinc_jax.learning.onn.ONNApply`).
        params: its parameters (``nnx.State``), projected where ``approx_layers`` says.
        dataset: the inputs (the exhaustive grid in training); scored whole every round.
        approx_layers: 1-based weight matrices kept diagonal x unitary (projected after
            every step, as in training).
        rounds: scoring rounds after the start, ``>= 1``; stops early at 100 %.
        steps: Adam steps per round, ``>= 1``.
        learning_rate: Adam's constant step, ``> 0``.
        tolerance: the hinge's dead zone in symbol units, in ``(0, 0.5)``.
        slack: how far inside the dead zone an input is still trained on, in
            ``[0, tolerance]``.
        side: the projection's side (``"left"``: ``diag(d) U``), as the run's config.
        refine_steps: the projection's refinements, as the run's config.
        chunk_size: inputs per chunk of the scoring pass, ``>= 1``.
        gradient_chunk: most hard inputs whose gradient is taken at once (memory: their
            forward and backward), ``>= 1``; larger hard sets are summed in chunks.
        classes: the dataset's samples grouped by target
            (:func:`~optinc_jax.learning.balance.target_classes`) to weigh every target
            equally in the hinge (:func:`~optinc_jax.learning.balance.class_weights`);
            ``None`` (the default) weighs every input equally.
        backtrack: in ``[0, 1)``: a round whose steps raised the whole-dataset hinge is
            undone and the next steps start again from where it started, with Adam's step
            multiplied by this factor (moments reset); 0 (the default) never: every round
            steps on from wherever the last one ended.

    Returns:
        The :class:`FinishResult`; never more wrong inputs than given.

    Raises:
        ValueError: on a value outside the ranges above.
    """
    tolerance = float(
        require_real(
            "tolerance", tolerance, low=0.0, high=0.5, low_inclusive=False, high_inclusive=False
        )
    )
    slack = float(require_real("slack", slack, low=0.0, high=tolerance))
    learning_rate = float(
        require_real("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    )
    rounds = require_int("rounds", rounds, 1)
    steps = require_int("steps", steps, 1)
    chunk_size = require_int("chunk_size", chunk_size, 1)
    gradient_chunk = require_int("gradient_chunk", gradient_chunk, 1)
    backtrack = float(require_real("backtrack", backtrack, low=0.0, high=1.0, high_inclusive=False))
    approx_layers = tuple(approx_layers)
    opt_state = optax.adam(learning_rate).init(params)
    best_params, best_round, best_wrong, best_symbols = params, 0, None, None
    wrong_by_round, hard_by_round, rate_by_round, hinge_by_round = [], [], [], []
    # with backtrack: the network the last kept round started from, its hard set and its L
    accepted_params = accepted_hard = accepted_count = accepted_hinge = None
    current = jax.tree.map(jnp.copy, params)  # the steps donate their input
    for round_index in range(rounds + 1):
        hard, diagnostics = find_hard_samples(
            apply_fn,
            current,
            dataset,
            margin=0.5 - tolerance + slack,
            chunk_size=min(chunk_size, dataset.size),
        )
        wrong = dataset.size - diagnostics["correct"]
        wrong_by_round.append(wrong)
        hard_by_round.append(diagnostics["hard_count"])
        if best_wrong is None or wrong < best_wrong:
            best_wrong, best_round, best_symbols = wrong, round_index, diagnostics["symbol_errors"]
            best_params = params if round_index == 0 else jax.tree.map(jnp.copy, current)
        # A non-finite output scores a margin of -inf: the steps diverged, stop there.
        diverged = not math.isfinite(diagnostics["min_margin"])
        if round_index == rounds or wrong == 0 or diagnostics["hard_count"] == 0 or diverged:
            break
        count = diagnostics["hard_count"]
        rows = _bucket_rows(count, dataset.size)
        chunk = min(rows, gradient_chunk)
        if backtrack > 0:
            hinge = float(
                _hard_set_hinge(
                    current,
                    hard.indices,
                    hard.count,
                    classes,
                    apply_fn=apply_fn,
                    dataset=dataset,
                    rows=rows,
                    chunk=chunk,
                    tolerance=tolerance,
                )
            )
            if accepted_hinge is not None and hinge > accepted_hinge:
                # The round's steps raised L: step again from where it started, shorter.
                current = jax.tree.map(jnp.copy, accepted_params)
                hard, count = accepted_hard, accepted_count
                rows = _bucket_rows(count, dataset.size)
                chunk = min(rows, gradient_chunk)
                learning_rate *= backtrack
                opt_state = optax.adam(learning_rate).init(current)
            else:
                accepted_params = jax.tree.map(jnp.copy, current)
                accepted_hard, accepted_count, accepted_hinge = hard, count, hinge
            hinge_by_round.append(hinge)
        rate_by_round.append(learning_rate)
        rate = jnp.float32(learning_rate)  # one device scalar for the round's steps
        for _ in range(steps):
            current, opt_state = _finish_step(
                current,
                opt_state,
                hard.indices,
                hard.count,
                classes,
                rate,
                apply_fn=apply_fn,
                dataset=dataset,
                rows=rows,
                chunk=chunk,
                tolerance=tolerance,
            )
            if approx_layers:
                current = projection_diag_unitary(
                    current, approx_layers, side=side, refine_steps=refine_steps
                )
    return FinishResult(
        best_params,
        wrong_by_round[0],
        best_wrong,
        best_round,
        tuple(wrong_by_round),
        tuple(hard_by_round),
        tuple(best_symbols),
        tuple(rate_by_round),
        tuple(hinge_by_round),
    )
