"""Gradient pytrees as the collectives see them: float leaves, dtype groups, axis sizes.

Shared by :mod:`optinc_jax.network.collective` and :mod:`optinc_jax.network.ring`, which
average every floating leaf of a pytree over a named mapped axis (``shard_map`` / ``pmap``).
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["axis_size", "dtype_groups", "float_leaves", "require_sum_fits"]


def float_leaves(tree: Any) -> tuple[list[jax.Array], Any]:
    """Leaves and treedef of a gradient pytree whose leaves are all real floating arrays.

    Args:
        tree: any pytree of arrays.

    Returns:
        ``(leaves, treedef)``.

    Raises:
        ValueError: naming the first leaf (by its path) that is not a real float array.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = []
    for path, leaf in paths_and_leaves:
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(
                f"pmean averages real floating leaves; the leaf at "
                f"{jax.tree_util.keystr(path) or '<root>'} has dtype {leaf.dtype}"
            )
        leaves.append(leaf)
    return leaves, treedef


def dtype_groups(leaves: Sequence[jax.Array]) -> dict[np.dtype, list[int]]:
    """Leaf indices by dtype, in first-seen order (one fused buffer per dtype).

    Examples:
        >>> dtype_groups([jnp.zeros(2), jnp.zeros(3, jnp.bfloat16), jnp.ones(1)])
        {dtype('float32'): [0, 2], dtype(bfloat16): [1]}
    """
    groups: dict[np.dtype, list[int]] = {}
    for index, leaf in enumerate(leaves):
        groups.setdefault(np.dtype(leaf.dtype), []).append(index)
    return groups


def axis_size(axis_name: Any) -> int:
    """Number of servers along a mapped axis (inside ``shard_map`` or ``pmap``).

    Raises:
        ValueError: if the size is not static.
    """
    size = lax.psum(1, axis_name)
    if not isinstance(size, int):
        raise ValueError(f"the size of axis {axis_name!r} must be static, got {size!r}")
    return size


def require_sum_fits(servers: int, bits: int) -> None:
    """Raise unless the int32 sum of ``servers`` ``bits``-bit values cannot overflow.

    Raises:
        ValueError: if ``servers (2^bits - 1)`` exceeds the int32 maximum.
    """
    if servers * (2**bits - 1) > np.iinfo(np.int32).max:
        raise ValueError(
            f"N (2^B - 1) = {servers * (2**bits - 1)} for N = {servers}, bits = {bits} "
            "overflows the int32 sum of the servers' values"
        )
