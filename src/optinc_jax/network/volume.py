"""Communication volume per server, ring all-reduce against OptINC (the paper's Fig. 6).

:func:`communication_volume` runs both collectives, :func:`optinc_jax.network.ring.ring_pmean`
(float32) and :func:`optinc_jax.network.collective.pmean` (``bits``-bit), under
``jax.shard_map`` on one gradient and reads their byte counters. The numbers are those
counters, normalised to the gradient each collective carries: the ring's float32 gradient
and OptINC's ``B``-bit gradient (as the paper normalises "by the gradients to be
averaged"). With at least ``N`` devices the collectives run on real arrays; with fewer
(e.g. 16 servers on an 8-device host) the same functions are traced with
``jax.eval_shape`` over an abstract mesh of ``N`` devices, which runs the same counting
code (the counters depend on shapes only).
"""

from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from optinc_jax.encoding.pam4 import num_symbols
from optinc_jax.encoding.quantize import DEFAULT_BLOCK_SIZE
from optinc_jax.network.collective import CommStats, pmean_with_stats
from optinc_jax.network.ring import ring_pmean_with_stats
from optinc_jax.validation import require_int

__all__ = ["CommunicationVolume", "communication_volume"]

_AXIS = "servers"


class CommunicationVolume(NamedTuple):
    """Data each server sends for one gradient average (one row of Fig. 6).

    Attributes:
        servers: ``N``.
        ring: ring all-reduce data sent per server over the float gradient size
            (``2 (N - 1) / N`` when ``N`` divides the gradient).
        optinc: OptINC gradient data sent per server over the ``B``-bit gradient size (1).
        optinc_exponent_overhead: OptINC's exponent exchange over the ``B``-bit gradient
            size (``exponent bits / (block_size B)``, 0.0039 for 8 bits and 256 elements).
        ring_bytes_sent: bytes a server sends in the float32 ring.
        optinc_bytes_sent: gradient bytes a server sends to OptINC.
        optinc_exponent_bytes_sent: exponent bytes a server sends to OptINC.
        elements: gradient elements per server.
        bits: OptINC's gradient bit width ``B``.
        block_size: elements per quantization block.
        executed: ``True`` if the collectives ran on ``N`` devices, ``False`` if they were
            only traced over an abstract mesh (fewer devices than servers).
    """

    servers: int
    ring: float
    optinc: float
    optinc_exponent_overhead: float
    ring_bytes_sent: int
    optinc_bytes_sent: int
    optinc_exponent_bytes_sent: int
    elements: int
    bits: int
    block_size: int
    executed: bool


def _measure(
    servers: int, size: int, bits: int, block_size: int
) -> tuple[CommStats, CommStats, bool]:
    """Run (or trace) both collectives on ``N`` servers; the counters they report."""
    counted: list[CommStats] = []

    def both(gradient):
        ring_out, ring_stats = ring_pmean_with_stats(gradient, _AXIS)
        optinc_out, optinc_stats = pmean_with_stats(
            gradient, _AXIS, bits=bits, block_size=block_size
        )
        counted[:] = [ring_stats, optinc_stats]
        return ring_out, optinc_out

    spec = PartitionSpec(_AXIS)
    executed = len(jax.devices()) >= servers
    if executed:
        mesh = Mesh(np.array(jax.devices()[:servers]), (_AXIS,))
        mapped = jax.shard_map(both, mesh=mesh, in_specs=spec, out_specs=(spec, spec))
        gradient = jax.random.normal(jax.random.key(servers), (servers * size,), jnp.float32)
        jax.block_until_ready(jax.jit(mapped)(gradient))
    else:
        mesh = AbstractMesh((servers,), (_AXIS,))
        mapped = jax.shard_map(both, mesh=mesh, in_specs=spec, out_specs=(spec, spec))
        jax.eval_shape(mapped, jax.ShapeDtypeStruct((servers * size,), jnp.float32))
    return (*counted, executed)


def communication_volume(
    servers: int | Iterable[int] = (4, 8, 16),
    *,
    size: int = 1 << 16,
    bits: int = 8,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[CommunicationVolume]:
    """Fig. 6: data per server of ring all-reduce and OptINC, from their byte counters.

    Args:
        servers: one server count ``N >= 1`` or several.
        size: gradient elements per server (float32). With ``N`` and ``block_size``
            dividing it the ratios are exact; otherwise the zero padding shows.
        bits: OptINC's gradient bit width ``B``.
        block_size: elements per quantization block.

    Returns:
        One :class:`CommunicationVolume` per server count, in the order given
        (``row._asdict()`` is JSON-ready).

    Raises:
        ValueError: on a server count below 1, ``size < 1``, an invalid ``bits`` or
            ``block_size``.

    Examples:
        >>> [(row.servers, row.ring, row.optinc) for row in communication_volume((4, 16))]
        [(4, 1.5, 1.0), (16, 1.875, 1.0)]
    """
    counts = [servers] if isinstance(servers, int) else list(servers)
    counts = [require_int("servers", n, 1) for n in counts]
    size = require_int("size", size, 1)
    num_symbols(bits)
    block_size = require_int("block_size", block_size, 1)
    rows = []
    for n in counts:
        ring, optinc, executed = _measure(n, size, bits, block_size)
        rows.append(
            CommunicationVolume(
                servers=n,
                ring=ring.sent_ratio,
                optinc=optinc.sent_ratio,
                optinc_exponent_overhead=optinc.exponent_overhead,
                ring_bytes_sent=ring.bytes_sent,
                optinc_bytes_sent=optinc.payload_bytes_sent,
                optinc_exponent_bytes_sent=optinc.exponent_bytes_sent,
                elements=size,
                bits=bits,
                block_size=block_size,
                executed=executed,
            )
        )
    return rows
