"""Hardware-aware projection of ONN weights onto the diagonal x unitary structure.

:func:`projection_diag_unitary` is the pure ``params -> params`` map (named like
``optax.projections``); the trainer applies it every ``project_every`` epochs, between the
jitted epochs. It is jitted with the selection as a static value, so every run and every
call with the same selection shares one compilation.
"""

from collections.abc import Sequence
from functools import partial
from typing import Literal

import jax

from optinc_jax.learning.onn import weight_matrix_index
from optinc_jax.photonics.approx import approx_diag_unitary
from optinc_jax.validation import require_choice, require_int

__all__ = ["compile_projection_diag_unitary", "projection_diag_unitary"]


@partial(jax.jit, static_argnames=("approx_layers", "side", "refine_steps"))
def _project(params, approx_layers: tuple[int, ...], side: str, refine_steps: int):
    selected = {index - 1 for index in approx_layers}

    def project_leaf(path, leaf):
        if weight_matrix_index(path) not in selected:
            return leaf
        return approx_diag_unitary(leaf.T, side=side, refine_steps=refine_steps).T

    return jax.tree_util.tree_map_with_path(project_leaf, params)


def projection_diag_unitary(
    params,
    approx_layers: Sequence[int],
    *,
    side: Literal["left", "right"] = "left",
    refine_steps: int = 0,
):
    """Projects the selected weight matrices onto blockwise ``diag(d) U`` form.

    For every selected matrix ``W`` (1-based index, ``W = kernel.T`` of shape ``[out, in]``)
    this solves, block by block, ``argmin_{d, U orthogonal} ||W_b - diag(d) U||_F`` in the
    paper's closed form (polar factor of the block, least-squares ``d``; see
    :func:`optinc_jax.photonics.approx.approx_diag_unitary`). Other leaves are returned
    unchanged. Jitted; the selection, ``side`` and ``refine_steps`` are static.

    Args:
        params: ONN parameter pytree (``nnx.State`` or pure dict with ``layers/<i>/kernel``).
        approx_layers: 1-based weight-matrix indices to project.
        side: ``"left"`` (``diag(d) U``) or ``"right"`` (``U diag(d)``).
        refine_steps: alternating least-squares refinements per block.

    Returns:
        A pytree of the same structure.

    Raises:
        ValueError: on a non-positive index, an unknown ``side`` or negative refinements.
    """
    return _project(params, *_projection_arguments(approx_layers, side, refine_steps))


def compile_projection_diag_unitary(
    params,
    approx_layers: Sequence[int],
    *,
    side: Literal["left", "right"] = "left",
    refine_steps: int = 0,
) -> None:
    """Compiles :func:`projection_diag_unitary` for these arguments, without running it.

    A later call with parameters of the same shapes and dtypes (uncommitted, on one device)
    and the same other arguments reuses the compilation: the trainer compiles it on a second
    thread while the run is set up.

    Args:
        params: the parameters, or their ``jax.ShapeDtypeStruct`` pytree.
        approx_layers: as for :func:`projection_diag_unitary`.
        side: as for :func:`projection_diag_unitary`.
        refine_steps: as for :func:`projection_diag_unitary`.

    Raises:
        ValueError: as :func:`projection_diag_unitary`.
    """
    _project.lower(params, *_projection_arguments(approx_layers, side, refine_steps)).compile()


def _projection_arguments(
    approx_layers: Sequence[int], side: str, refine_steps: int
) -> tuple[tuple[int, ...], str, int]:
    """The validated static arguments of ``_project``: sorted unique indices, side, steps."""
    approx_layers = tuple(
        sorted({require_int("every approx index", index, 1) for index in approx_layers})
    )
    side = require_choice("side", side, ("left", "right"))
    refine_steps = require_int("refine_steps", refine_steps, 0)
    return approx_layers, side, refine_steps
