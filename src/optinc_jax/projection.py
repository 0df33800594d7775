"""Hardware-aware projection of ONN weights onto the diagonal x unitary structure.

:func:`projection_diag_unitary` is the pure ``params -> params`` map;
:func:`periodic_projection` wraps it as an optax ``GradientTransformation`` that, every
``every_steps`` optimizer steps, turns the update into the one that lands the parameters
exactly on the projection of where they would have gone.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optinc_jax.approx import approx_diag_unitary
from optinc_jax.onn import weight_matrix_index

__all__ = ["ProjectionState", "periodic_projection", "projection_diag_unitary"]


def projection_diag_unitary(
    params,
    approx_layers: Sequence[int],
    *,
    side: str = "left",
    refine_steps: int = 0,
):
    """Projects the selected weight matrices onto blockwise ``diag(d) U`` form.

    For every selected matrix ``W`` (1-based index, ``W = kernel.T`` of shape ``[out, in]``)
    this solves, block by block, ``argmin_{d, U orthogonal} ||W_b - diag(d) U||_F`` in the
    paper's closed form (polar factor of the block, least-squares ``d``; see
    :func:`optinc_jax.approx.approx_diag_unitary`). Other leaves are returned unchanged.

    Args:
        params: ONN parameter pytree (``nnx.State`` or pure dict with ``layers/<i>/kernel``).
        approx_layers: 1-based weight-matrix indices to project.
        side: ``"left"`` (``diag(d) U``) or ``"right"`` (``U diag(d)``).
        refine_steps: alternating least-squares refinements per block.

    Returns:
        A pytree of the same structure.
    """
    selected = {int(index) - 1 for index in approx_layers}

    def project_leaf(path, leaf):
        if weight_matrix_index(path) not in selected:
            return leaf
        return approx_diag_unitary(leaf.T, side=side, refine_steps=refine_steps).T

    return jax.tree_util.tree_map_with_path(project_leaf, params)


class ProjectionState(NamedTuple):
    """Step counter of :func:`periodic_projection`."""

    count: jax.Array


def periodic_projection(
    project: Callable, *, every_steps: int, start_step: int = 0
) -> optax.GradientTransformationExtraArgs:
    """Optax transformation applying ``project`` to the parameters on a step schedule.

    On step ``s`` (0-based count of updates) with ``s + 1 >= start_step + every_steps`` and
    ``(s + 1 - start_step) % every_steps == 0`` the incoming update ``u`` is replaced by
    ``project(params + u) - params``, so ``optax.apply_updates`` yields projected
    parameters; on other steps ``u`` passes through. Chain it last.

    Args:
        project: ``params -> params`` projection, e.g. a partial of
            :func:`projection_diag_unitary`.
        every_steps: period in optimizer steps (>= 1).
        start_step: steps before which no projection happens.

    Returns:
        The gradient transformation; ``update`` requires ``params``.
    """
    if every_steps < 1 or start_step < 0:
        raise ValueError(
            f"need every_steps >= 1 and start_step >= 0, got {every_steps}, {start_step}"
        )

    def init(params) -> ProjectionState:
        del params
        return ProjectionState(count=jnp.zeros((), jnp.int32))

    def update(updates, state: ProjectionState, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("periodic_projection needs params in update()")
        done = state.count + 1 - start_step
        due = (done >= every_steps) & (done % every_steps == 0)

        def projected(updates):
            target = project(optax.apply_updates(params, updates))
            return jax.tree_util.tree_map(lambda new, old: new - old, target, params)

        updates = jax.lax.cond(due, projected, lambda updates: updates, updates)
        return updates, ProjectionState(count=state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)
