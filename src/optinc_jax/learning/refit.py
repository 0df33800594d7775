r"""Last-layer refit: the output matrix re-solved over the whole grid for the receiver.

Not in the paper, which trains every matrix by gradient descent alone. After training, the
last weight matrix maps the last hidden layer's features ``h`` (``[F]``, fixed) to the
``K`` symbol amplitudes; with the bias and the ONN's fixed output map folded in,
``y_k = [h, 1] . w_k``. The receiver decides symbol ``k`` right when ``|y_k - t_k| < 0.5``
(one-sided at the outer levels: the receiver reads anything below 0 as 0 and above 3 as
3). The squared hinge of one symbol over the whole dataset,

    ``L_k(w_k) = sum_s max(|y_sk - t_sk| - tolerance, 0)^2``  (zero below level 0 where
    ``t_sk = 0`` and above level 3 where ``t_sk = 3``),

is convex in ``w_k``, so :func:`refit_last_layer` minimizes it directly, with the whole
grid in every step rather than by stochastic minibatches: a Newton method on the active
set (the inputs past the tolerance; the least-squares solution that puts each of them at
the tolerance's edge), with a line search over fixed step sizes that include 0, so the
loss never rises. A symbol keeps the
iterate with the fewest wrong decisions on the dataset (its start included; among equals
the one of least loss), so the refit never leaves a symbol with more wrong inputs than it
found.

Why: gradient descent on the mean squared error weighs the bulk of the grid, where every
input is already right, as much as the few inputs beside a cliff of a symbol; the hinge
weighs only the inputs near or past a threshold. On the 8b8s network that ended at 389
wrong inputs, the refit put every symbol-1 input right (179 wrong before) from the same
features; symbol 0 it barely moved (README, "Training recipe").

Only a free last matrix can be refit: an approximated one must stay diagonal x unitary.
The features of the whole dataset are computed once and kept on the device:
``size x (F + 1)`` float32 (390,625 x 65 x 4 B = 102 MB for 8b8s, 3.6 GB for 16b4s).
Every iteration is two passes of matrix products over them, all inside one jitted loop.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from optinc_jax.encoding.dataset import Dataset
from optinc_jax.encoding.units import receiver
from optinc_jax.learning.loss import receiver_hinge
from optinc_jax.learning.onn import ONNApply, layer_leaf, onn_weights
from optinc_jax.photonics.precision import FULL_PRECISION, full_matmul
from optinc_jax.validation import require_int, require_real

__all__ = ["RefitResult", "refit_last_layer", "with_last_layer"]

_STEP_SIZES = (0.0, *(2.0**-power for power in range(13)))
"""Line-search candidates; 0 first, so that a step that helps no input is not taken."""


class RefitResult(NamedTuple):
    """Outcome of :func:`refit_last_layer`.

    Attributes:
        params: the ONN parameters with the refit last layer (every other leaf unchanged;
            the rows of symbols the refit did not improve unchanged too).
        kernel: the last layer's new kernel ``[h_last, K]``.
        bias: its new bias ``[K]``.
        wrong_before: ``[K]`` inputs whose symbol ``k`` the receiver decided wrongly before.
        wrong_after: ``[K]`` the same after the refit (never more than before).
        loss_before: ``[K]`` squared hinge of each symbol before (symbol units squared).
        loss_after: ``[K]`` the same after.
    """

    params: nnx.State
    kernel: jax.Array
    bias: jax.Array
    wrong_before: tuple[int, ...]
    wrong_after: tuple[int, ...]
    loss_before: tuple[float, ...]
    loss_after: tuple[float, ...]

    def to_json(self) -> dict:
        """The counts and losses as a JSON-ready dict (no parameters)."""
        return {
            "wrong_symbols_before": list(self.wrong_before),
            "wrong_symbols_after": list(self.wrong_after),
            "loss_before": list(self.loss_before),
            "loss_after": list(self.loss_after),
        }


@partial(jax.jit, static_argnames=("apply_fn", "dataset", "chunk_size"))
def _feature_table(apply_fn: ONNApply, params, dataset: Dataset, chunk_size: int):
    """The dataset's features, standardized, with its symbols, in chunks.

    Returns ``((features [C, chunk, F + 1] with a trailing 1, symbols [C, chunk, K],
    valid [C, chunk]), (shift, scale))``, the columns' standardization (``[F + 1]`` each).
    """
    chunks = -(-dataset.size // chunk_size)
    model = nnx.merge(apply_fn.graphdef, params)

    def one_chunk(chunk):
        index = chunk * chunk_size + jnp.arange(chunk_size)
        valid = index < dataset.size
        samples = dataset.samples(jnp.where(valid, index, 0))
        features = model.features(samples.inputs)
        ones = jnp.ones((*features.shape[:-1], 1), features.dtype)
        return jnp.concatenate([features, ones], axis=-1), samples.target_symbols, valid

    features, symbols, valid = jax.lax.map(one_chunk, jnp.arange(chunks))
    # Standardized columns keep the float32 Gram matrices well conditioned; the trailing
    # column of ones stays as it is (its mean is 1, its spread 0).
    count = jnp.sum(valid)
    mean = jnp.sum(jnp.where(valid[..., None], features, 0.0), axis=(0, 1)) / count
    deviation = features - mean[None, None, :]
    spread = jnp.sqrt(jnp.sum(jnp.where(valid[..., None], deviation**2, 0.0), axis=(0, 1)) / count)
    shift = mean.at[-1].set(0.0)
    scale = jnp.where(spread > 0, spread, 1.0).at[-1].set(1.0)
    return ((features - shift[None, None, :]) / scale[None, None, :], symbols, valid), (
        shift,
        scale,
    )


def _line_scan(table, w, direction, tolerance: float):
    """Loss ``[S, K]`` and wrong decisions ``[S, K]`` at ``w + s * direction`` per step ``s``."""
    features, symbols, valid = table
    steps = jnp.asarray(_STEP_SIZES, w.dtype)

    def accumulate(carry, chunk):
        h, t, ok = chunk
        y = (
            full_matmul(h, w)[:, None, :]
            + steps[None, :, None] * full_matmul(h, direction)[:, None, :]
        )
        target = t[:, None, :]
        weight = ok[:, None, None]
        loss = jnp.sum(jnp.where(weight, receiver_hinge(y, target, tolerance) ** 2, 0.0), axis=0)
        wrong = jnp.sum(weight & (receiver(y) != target), axis=0)
        return (carry[0] + loss, carry[1] + wrong), None

    shape = (len(_STEP_SIZES), w.shape[1])
    start = (jnp.zeros(shape, w.dtype), jnp.zeros(shape, jnp.int32))
    (loss, wrong), _ = jax.lax.scan(accumulate, start, (features, symbols, valid))
    return loss, wrong


def _newton_target(table, w, tolerance: float):
    """Least-squares solution ``[F + 1, K]`` that puts every active input at its edge."""
    features, symbols, valid = table

    def accumulate(carry, chunk):
        h, t, ok = chunk
        y = full_matmul(h, w)
        active = ok[:, None] & (receiver_hinge(y, t, tolerance) > 0)
        goal = t + tolerance * jnp.sign(y - t)
        weighted = h[:, None, :] * active[:, :, None]  # [chunk, K, F + 1]
        gram = jnp.einsum("ckf,cg->kfg", weighted, h, precision=FULL_PRECISION)
        moment = jnp.einsum("ckf,ck->kf", weighted, goal, precision=FULL_PRECISION)
        return (carry[0] + gram, carry[1] + moment), None

    size, symbols_count = w.shape
    start = (
        jnp.zeros((symbols_count, size, size), w.dtype),
        jnp.zeros((symbols_count, size), w.dtype),
    )
    (gram, moment), _ = jax.lax.scan(accumulate, start, (features, symbols, valid))
    # A tiny ridge relative to the Gram matrix's scale keeps the solve defined when the
    # active set is small or the features are collinear (the line search guards the rest).
    ridge = 1e-6 * jnp.trace(gram, axis1=1, axis2=2)[:, None, None] / size + 1e-12
    solved = jnp.linalg.solve(gram + ridge * jnp.eye(size, dtype=w.dtype)[None], moment[..., None])
    return solved[..., 0].T


@partial(jax.jit, static_argnames=("tolerance", "iterations"))
def _refit(table, w, tolerance: float, iterations: int):
    loss, wrong = _line_scan(table, w, jnp.zeros_like(w), tolerance)
    start = (w, w, wrong[0], loss[0])

    def iterate(_, carry):
        w, best_w, best_wrong, best_loss = carry
        direction = _newton_target(table, w, tolerance) - w
        loss, wrong = _line_scan(table, w, direction, tolerance)
        choice = jnp.argmin(loss, axis=0)  # [K]; ties pick the smallest index, step 0
        w = w + jnp.asarray(_STEP_SIZES, w.dtype)[choice][None, :] * direction
        chosen_wrong = jnp.take_along_axis(wrong, choice[None, :], axis=0)[0]
        chosen_loss = jnp.take_along_axis(loss, choice[None, :], axis=0)[0]
        # Fewest wrong decisions first; among equals, the smaller loss (the larger margin).
        better = (chosen_wrong < best_wrong) | (
            (chosen_wrong == best_wrong) & (chosen_loss < best_loss)
        )
        best_w = jnp.where(better[None, :], w, best_w)
        best_wrong = jnp.where(better, chosen_wrong, best_wrong)
        return w, best_w, best_wrong, jnp.where(better, chosen_loss, best_loss)

    _, best_w, best_wrong, best_loss = jax.lax.fori_loop(0, iterations, iterate, start)
    return best_w, wrong[0], best_wrong, loss[0], best_loss


def with_last_layer(params: nnx.State, kernel: jax.Array, bias: jax.Array) -> nnx.State:
    """ONN parameters with the last layer's kernel and bias replaced, every other leaf kept.

    Args:
        params: ONN parameters (``nnx.State`` or its pure dict) with ``layers/<i>/...``.
        kernel: the new last kernel ``[h_last, K]`` (``W.T``).
        bias: the new last bias ``[K]``.

    Returns:
        A pytree of the same structure.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    last = max(leaf[0] for leaf in (layer_leaf(path) for path, _ in leaves) if leaf is not None)
    replacements = {"kernel": kernel, "bias": bias}

    def replace(path, leaf):
        found = layer_leaf(path)
        if found is None or found[0] != last or found[1] not in replacements:
            return leaf
        return jnp.asarray(replacements[found[1]], leaf.dtype).reshape(leaf.shape)

    return jax.tree_util.tree_map_with_path(replace, params)


def refit_last_layer(
    apply_fn: ONNApply,
    params: nnx.State,
    dataset: Dataset,
    *,
    tolerance: float = 0.35,
    iterations: int = 60,
    chunk_size: int = 4096,
) -> RefitResult:
    """Re-solves the last weight matrix and bias for the receiver's decisions on a dataset.

    Args:
        apply_fn: the ONN's pure forward (:class:`~optinc_jax.learning.onn.ONNApply`).
        params: its parameters (``nnx.State``); the last layer must be free (not
            approximated): the caller's responsibility.
        dataset: the inputs the refit is solved on (the exhaustive grid in training).
        tolerance: the hinge's dead zone in symbol units, in ``(0, 0.5)``: an output within
            it of its level costs nothing; smaller values ask for a larger margin.
        iterations: Newton iterations, ``>= 1``.
        chunk_size: rows per chunk of the feature table, ``>= 1``.

    Returns:
        The :class:`RefitResult`; per symbol, never more wrong inputs than before.

    Raises:
        ValueError: on a tolerance outside ``(0, 0.5)`` or a non-positive count.
    """
    tolerance = require_real(
        "tolerance", tolerance, low=0.0, high=0.5, low_inclusive=False, high_inclusive=False
    )
    tolerance = float(tolerance)
    iterations = require_int("iterations", iterations, 1)
    chunk_size = require_int("chunk_size", chunk_size, 1)
    model = nnx.merge(apply_fn.graphdef, params)
    last = len(model.layers) - 1
    weight, bias = onn_weights(params)[last]
    kernel = weight.T
    scale, shift = model.output_scale, model.output_shift
    w = jnp.concatenate([kernel * scale, (bias * scale + shift)[None, :]], axis=0)
    table, (column_shift, column_scale) = _feature_table(
        apply_fn, params, dataset, min(chunk_size, dataset.size)
    )
    # In standardized columns h' = (h - shift) / scale the same outputs need
    # w' = scale * w, with the bias row absorbing shift . w.
    standard_w = w * column_scale[:, None]
    standard_w = standard_w.at[-1].add(full_matmul(column_shift, w))
    best_standard, wrong_before, wrong_after, loss_before, loss_after = _refit(
        table, standard_w.astype(jnp.float32), tolerance, iterations
    )
    best_w = best_standard / column_scale[:, None]
    best_w = best_w.at[-1].add(-full_matmul(column_shift, best_w))
    # A symbol the refit did not improve keeps its trained row bit for bit.
    improved = wrong_after < wrong_before
    new_kernel = jnp.where(improved[None, :], best_w[:-1] / scale, kernel).astype(kernel.dtype)
    new_bias = jnp.where(improved, (best_w[-1] - shift) / scale, bias).astype(bias.dtype)

    loss_after = jnp.where(improved, loss_after, loss_before)

    def as_tuple(values, kind):
        return tuple(kind(value) for value in np.asarray(values))

    return RefitResult(
        with_last_layer(params, new_kernel, new_bias),
        new_kernel,
        new_bias,
        as_tuple(wrong_before, int),
        as_tuple(wrong_after, int),
        as_tuple(loss_before, float),
        as_tuple(loss_after, float),
    )
