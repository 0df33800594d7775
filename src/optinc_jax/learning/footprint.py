"""Memory a training run will need, estimated before anything is allocated.

A batch of 10^8 samples or a 30-bit scenario does not fail gracefully inside XLA: it
allocates until the process is killed, after the run directory was created. The trainer
calls :func:`require_fits_memory` first, so such a configuration is refused with the size
it would need, and nothing is written.

The estimate is an upper-bound-style sum of the largest live buffers, in bytes (float32 and
int32 are 4 bytes): the epoch's sample indices (and the permutation they are cut from), one
minibatch's activations kept for the backward pass, the parameters with their gradients and
Adam moments, one evaluation chunk's activations and the evaluation's error histogram
(``2^(B+1)`` bins). XLA's own workspace is not modelled; the estimate is meant to catch
configurations that are off by orders of magnitude, not to pack memory tightly.
"""

import itertools
import os
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MemoryFootprint", "available_memory_bytes", "require_fits_memory", "training_footprint"]

WORD_BYTES = 4
"""float32 / int32 bytes."""

ACTIVATION_COPIES = 3
"""Per hidden unit and sample: forward value, ReLU mask and gradient in the backward pass."""

OPTIMIZER_COPIES = 4
"""Per parameter: the value, its gradient and Adam's two moments."""


class MemoryFootprint(NamedTuple):
    """Estimated peak buffers of a training run, in bytes.

    Attributes:
        indices: the epoch's sample indices (and the permutation they come from).
        batch: one minibatch's samples and activations, forward and backward.
        parameters: parameters, gradients and optimizer moments.
        evaluation: one evaluation chunk's activations and the error histogram.
    """

    indices: int
    batch: int
    parameters: int
    evaluation: int

    @property
    def total(self) -> int:
        """Sum of the parts, bytes."""
        return self.indices + self.batch + self.parameters + self.evaluation


def training_footprint(
    layers: Sequence[int],
    *,
    bits: int,
    dataset_size: int,
    batch_size: int,
    steps_per_epoch: int,
    eval_chunk_size: int,
    permutation_limit: int,
) -> MemoryFootprint:
    """Estimated peak memory of one training run (see the module docstring).

    Args:
        layers: ONN layer widths ``[I, ..., K]``.
        bits: bit width ``B`` of the targets (the histogram has ``2^(B+1)`` bins).
        dataset_size: samples in the dataset.
        batch_size: samples per optimizer step.
        steps_per_epoch: optimizer steps per epoch.
        eval_chunk_size: samples per evaluation chunk.
        permutation_limit: datasets up to this size are permuted each epoch.

    Returns:
        The :class:`MemoryFootprint`, bytes.

    Examples:
      >>> training_footprint([4, 8, 4], bits=8, dataset_size=100, batch_size=10,
      ...     steps_per_epoch=10, eval_chunk_size=100, permutation_limit=1 << 22).total
      15704
    """
    draws = steps_per_epoch * batch_size
    permutation = 2 * dataset_size if dataset_size <= permutation_limit else 0
    units = sum(layers)
    weights = sum(a * b + b for a, b in itertools.pairwise(layers))
    per_sample = ACTIVATION_COPIES * units + layers[0] + 2 * layers[-1] + 1
    return MemoryFootprint(
        indices=WORD_BYTES * (draws + permutation),
        batch=WORD_BYTES * batch_size * per_sample,
        parameters=WORD_BYTES * OPTIMIZER_COPIES * weights,
        evaluation=WORD_BYTES * (eval_chunk_size * (units + layers[-1] + 2) + 2 ** (bits + 1)),
    )


def available_memory_bytes() -> tuple[int, str]:
    """Memory of the default device: an accelerator's limit, or the host's physical RAM.

    Returns:
        ``(bytes, description)``, e.g. ``(25769803776, "host memory of cpu:0")``.
    """
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"memory of {device.platform}:{device.id}"
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * page_size), f"host memory of {device.platform}:{device.id}"


def require_fits_memory(footprint: MemoryFootprint, what: str) -> None:
    """Raise if the footprint exceeds the default device's memory.

    Args:
        footprint: from :func:`training_footprint`.
        what: the configuration, for the message (``"scenario 8b4s, batch 128"``).

    Raises:
        ValueError: naming the size needed, its largest part and the memory there is.
    """
    available, where = available_memory_bytes()
    if footprint.total <= available:
        return
    parts = footprint._asdict()
    largest = max(parts, key=parts.__getitem__)
    raise ValueError(
        f"{what} needs about {footprint.total / 2**30:,.1f} GiB "
        f"({largest}: {parts[largest] / 2**30:,.1f} GiB), more than the "
        f"{available / 2**30:,.1f} GiB {where}; use a smaller batch or scenario"
    )
