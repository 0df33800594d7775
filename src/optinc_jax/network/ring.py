"""Ring all-reduce, simulated faithfully with ``lax.ppermute``: the baseline OptINC replaces.

The servers of a named axis form a logical ring (server ``i`` sends to ``i + 1 mod N``).
Each server's gradient (all leaves of one dtype fused into one buffer, zero-padded to a
multiple of ``N``) is cut into ``N`` equal chunks, and:

1. **reduce-scatter**, ``N - 1`` rounds: in round ``s`` server ``i`` sends its running
   partial sum of chunk ``(i - s) mod N`` to its successor and adds what it receives to its
   own copy of chunk ``(i - s - 1) mod N``; after the last round server ``i`` holds the
   complete sum of chunk ``(i + 1) mod N`` and divides it by ``N``;
2. **all-gather**, ``N - 1`` rounds: the averaged chunks travel once around the ring.

Each server thus sends and receives ``2 (N - 1)`` chunks, ``2 (N - 1) / N`` of its gradient
(the paper's Fig. 6: 1.5, 1.75, 1.875 for ``N = 4, 8, 16``). The result equals
``lax.pmean`` up to the order of the float additions.

**Quantized ring** (``bits=B``): the same block quantization as OptINC (exponents agreed
by a ring max-all-reduce of the block exponents, counted), integer partial sums in the
reduce-scatter (``B + ceil(log2 N)`` bits per element on the wire, enough for a sum of
``N`` values), the owner's ``floor(sum u / N)`` (or nearest) sent back in ``B`` bits. It
returns exactly what ``optinc_jax.pmean(..., mode="ideal")`` returns: the only difference
between the two is the communication.

**Counters.** :func:`ring_pmean_with_stats` counts the bytes of every array passed to
``ppermute`` while tracing (static Python ints, zero padding included).

**Replication typing.** ``ppermute`` results are typed device-varying by ``shard_map``'s
replication check, although every server ends with the same values. Return the result
with ``out_specs=P(axis)`` (one copy per server) or use ``check_vma=False``; OptINC's
:func:`optinc_jax.network.collective.pmean` is typed replicated (its fan-in is a gather).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from optinc_jax.encoding.pam4 import num_symbols
from optinc_jax.encoding.quantize import (
    DEFAULT_BLOCK_SIZE,
    block_exponents,
    dequantize_block_codes,
    quantize_block_codes,
    to_blocks,
)
from optinc_jax.network.collective import ROUNDINGS, CommStats, average_codes
from optinc_jax.network.leaves import axis_size, dtype_groups, float_leaves, require_sum_fits
from optinc_jax.validation import require_choice, require_int

__all__ = ["ring_pmean", "ring_pmean_with_stats"]


class _Tally:
    """Bits one server sends and receives through ``ppermute``, counted while tracing."""

    def __init__(self):
        self.payload = 0
        self.exponent = 0


def _send_to_successor(x: jax.Array, axis_name, servers: int) -> jax.Array:
    """One ring round: every server sends ``x`` to ``i + 1 mod N`` and gets ``i - 1``'s."""
    return lax.ppermute(x, axis_name, [(i, (i + 1) % servers) for i in range(servers)])


def _ring_allreduce_chunks(
    chunks: jax.Array,
    axis_name,
    servers: int,
    *,
    combine,
    finish,
    reduce_bits: int,
    gather_bits: int,
) -> tuple[jax.Array, int]:
    """Ring all-reduce of ``chunks [N, c]``; returns ``[N, c]`` and the bits sent.

    ``combine(a, b)`` merges partial results in the reduce-scatter (sum or max) and
    ``finish(chunk)`` turns a complete chunk into what the all-gather distributes (e.g.
    the average). ``reduce_bits`` / ``gather_bits``: wire bits per element of each phase.
    """
    me = lax.axis_index(axis_name)
    size = chunks.shape[1]
    sent = 0

    def chunk(index):
        return lax.dynamic_index_in_dim(chunks, index % servers, keepdims=False)

    # Reduce-scatter: pass the running partial sum of chunk (me - s) on; after N - 1
    # rounds server `me` holds the complete chunk (me + 1) mod N.
    partial = chunk(me)
    for step in range(servers - 1):  # N - 1 communication rounds (static N)
        received = _send_to_successor(partial, axis_name, servers)
        sent += size * reduce_bits
        partial = combine(received, chunk(me - step - 1))
    piece = finish(partial)
    # All-gather: the finished chunks travel once around the ring.
    out = jnp.zeros((servers, *piece.shape), piece.dtype)
    out = lax.dynamic_update_index_in_dim(out, piece, (me + 1) % servers, 0)
    for step in range(servers - 1):
        piece = _send_to_successor(piece, axis_name, servers)
        sent += size * gather_bits
        out = lax.dynamic_update_index_in_dim(out, piece, (me - step) % servers, 0)
    return out, sent


def _to_chunks(flat: jax.Array, servers: int) -> jax.Array:
    """``[N, ceil(size / N)]``: ``flat`` zero-padded to ``N`` equal chunks."""
    chunk = -(-flat.size // servers)
    return jnp.pad(flat, (0, chunk * servers - flat.size)).reshape(servers, chunk)


def _float_ring(flat: jax.Array, axis_name, servers: int, tally: _Tally) -> jax.Array:
    bits = np.dtype(flat.dtype).itemsize * 8
    out, sent = _ring_allreduce_chunks(
        _to_chunks(flat, servers),
        axis_name,
        servers,
        combine=jnp.add,
        finish=lambda total: total / jnp.asarray(servers, flat.dtype),
        reduce_bits=bits,
        gather_bits=bits,
    )
    tally.payload += sent
    return out.reshape(-1)[: flat.size]


def _quantized_ring(
    flat_blocks: jax.Array,
    axis_name,
    servers: int,
    bits: int,
    rounding: str,
    tally: _Tally,
) -> jax.Array:
    """Quantized ring of ``[nb, bs]`` blocks; returns the dequantized ``[nb, bs]``."""
    nb, bs = flat_blocks.shape
    exponent_bits = np.finfo(flat_blocks.dtype).nexp  # the wire format of the leaves' dtype
    dtype = flat_blocks.dtype
    flat_blocks = flat_blocks.astype(jnp.promote_types(dtype, jnp.float32))  # as OptINC
    local = block_exponents(flat_blocks, block_size=bs)
    exponents, sent = _ring_allreduce_chunks(
        _to_chunks(local, servers),
        axis_name,
        servers,
        combine=jnp.maximum,
        finish=lambda e: e,
        reduce_bits=exponent_bits,
        gather_bits=exponent_bits,
    )
    tally.exponent += sent
    shared = exponents.reshape(-1)[:nb]
    u = quantize_block_codes(flat_blocks, shared, bits)
    sum_bits = bits + (servers - 1).bit_length()  # a sum of N values < 2^B
    total, sent = _ring_allreduce_chunks(
        _to_chunks(u.reshape(-1), servers),
        axis_name,
        servers,
        combine=jnp.add,
        finish=lambda s: average_codes(s, servers, rounding),
        reduce_bits=sum_bits,
        gather_bits=bits,
    )
    tally.payload += sent
    t = total.reshape(-1)[: nb * bs].reshape(nb, bs)
    return dequantize_block_codes(t, shared, bits, flat_blocks.dtype).astype(dtype)


def ring_pmean_with_stats(
    tree: Any,
    axis_name: Any,
    *,
    bits: int | None = None,
    rounding: str = "floor",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[Any, CommStats]:
    """:func:`ring_pmean` and the data each server sends and receives.

    Args:
        tree: as :func:`ring_pmean`.
        axis_name: as :func:`ring_pmean`.
        bits: as :func:`ring_pmean`.
        rounding: as :func:`ring_pmean`.
        block_size: as :func:`ring_pmean`.

    Returns:
        ``(averaged tree, CommStats)``; the stats are static Python ints (read them while
        tracing). ``gradient_bytes`` is the leaves' float size (``B`` bits per element when
        quantized); ``rounds = 2 (N - 1)``.

    Raises:
        ValueError: as :func:`ring_pmean`.

    Examples:
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(np.array(jax.devices()[:4]), ("ring",))
        >>> counted = []
        >>> def average(g):
        ...     out, stats = ring_pmean_with_stats(g, "ring")
        ...     counted.append(stats)
        ...     return out
        >>> _ = jax.shard_map(average, mesh=mesh, in_specs=P("ring"), out_specs=P("ring"))(
        ...     jnp.ones(4 * 1024))
        >>> counted[0].gradient_bytes, counted[0].payload_bytes_sent, counted[0].sent_ratio
        (4096, 6144, 1.5)
    """
    if bits is not None:
        num_symbols(bits)
    rounding = require_choice("rounding", rounding, ROUNDINGS)
    block_size = require_int("block_size", block_size, 1)
    leaves, treedef = float_leaves(tree)
    servers = axis_size(axis_name)
    if bits is not None:
        require_sum_fits(servers, bits)
    tally = _Tally()
    out: list[Any] = list(leaves)
    for indices in dtype_groups(leaves).values():
        members = [i for i in indices if leaves[i].size]
        if not members:
            continue
        if bits is None:
            flat = jnp.concatenate([leaves[i].reshape(-1) for i in members])
            averaged = _float_ring(flat, axis_name, servers, tally)
            offsets = np.cumsum([0] + [leaves[i].size for i in members])
            pieces = [averaged[offsets[k] : offsets[k + 1]] for k in range(len(members))]
        else:
            parts = [to_blocks(leaves[i], block_size) for i in members]
            averaged = _quantized_ring(
                jnp.concatenate(parts), axis_name, servers, bits, rounding, tally
            )
            offsets = np.cumsum([0] + [part.shape[0] for part in parts])
            pieces = [
                averaged[offsets[k] : offsets[k + 1]].reshape(-1) for k in range(len(members))
            ]
        for i, piece in zip(members, pieces, strict=True):
            out[i] = piece[: leaves[i].size].reshape(leaves[i].shape)
    elements = sum(leaf.size for leaf in leaves)
    gradient_bits = (
        sum(leaf.size * np.dtype(leaf.dtype).itemsize * 8 for leaf in leaves)
        if bits is None
        else elements * bits
    )
    stats = CommStats.from_bits(
        "ring" if bits is None else "ring-quantized",
        servers,
        elements,
        gradient_bits=gradient_bits,
        payload_bits_sent=tally.payload,
        payload_bits_received=tally.payload,
        exponent_bits_sent=tally.exponent,
        exponent_bits_received=tally.exponent,
        rounds=2 * (servers - 1),
    )
    return jax.tree_util.tree_unflatten(treedef, out), stats


def ring_pmean(
    tree: Any,
    axis_name: Any,
    *,
    bits: int | None = None,
    rounding: str = "floor",
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Any:
    """Average a pytree over a named axis with a simulated ring all-reduce.

    Call it inside ``jax.shard_map`` (or ``jax.pmap``) like ``lax.pmean``. Leaves of one
    dtype are fused into one buffer (as NCCL-style bucketing does) and reduced in that
    dtype; see the module docstring for the rounds.

    Args:
        tree: pytree of real floating arrays (one server's gradient).
        axis_name: the mapped axis (or tuple of axes) whose ``N`` members form the ring.
        bits: ``None`` for the float ring; an even bit width ``B`` for the quantized ring
            (block quantization as OptINC, integer sums).
        rounding: quantized ring only: ``"floor"`` or ``"nearest"`` average of the codes.
        block_size: quantized ring only: elements per quantization block.

    Returns:
        The averaged pytree (same shapes and dtypes), the same on every server.

    Raises:
        ValueError: on an invalid ``bits``, ``rounding`` or ``block_size``, or a leaf that
            is not a real floating array.

    Examples:
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(np.array(jax.devices()[:4]), ("ring",))
        >>> g = jnp.arange(8.0)  # server i holds [2 i, 2 i + 1]
        >>> jax.shard_map(lambda x: ring_pmean(x, "ring"), mesh=mesh,
        ...               in_specs=P("ring"), out_specs=P("ring"))(g).reshape(4, 2)[0]
        Array([3., 4.], dtype=float32)
    """
    return ring_pmean_with_stats(
        tree, axis_name, bits=bits, rounding=rounding, block_size=block_size
    )[0]
