"""Per-iteration latency of data-parallel training with ring all-reduce and with OptINC.

The paper's Fig. 7(b) model (SPEC section 5): one training step is its compute time plus
the time to average the gradients, with nothing overlapped,

    ``compute_s = flops_per_step / (device_tflops 1e12 * utilization)``,
    ``comm_s = bytes a server sends / (transceivers * transceiver_gbps 1e9 / 8)``.

Every input is measured or stated, never typed in as a result:

- ``params`` and ``flops_per_step`` come from the Flax models
  (:func:`optinc_jax.network.model_cost.model_cost`: parameters counted, FLOPs from XLA's
  cost analysis of the forward + backward step at ``batch_per_server``);
- the bytes each server sends come from the byte counters of the two collectives
  (:func:`optinc_jax.network.volume.communication_volume`), i.e. ``2 (N - 1) / N`` of the
  gradient for ring and ``1`` (plus the exponent exchange) for OptINC;
- the device, link and batch figures are :class:`LatencyAssumptions`, printed beside the
  result. The paper gives the device and link figures (:data:`optinc_jax.paper.
  LATENCY_SETTINGS`) but not its batch sizes or how it counted bandwidth.

With the paper's device and link figures and a batch of 128 images, ResNet-50's gradient
crosses 6.4 Tb/s in well under a millisecond while its step computes for tens of
milliseconds, so the modelled reduction is far below the paper's 25 %. Rather than tune an
assumption until the paper's number appears, :func:`latency_breakdown` also reports the
per-server batch and the link bandwidth at which this model would give the paper's
reduction (``batch_for_paper_reduction``, ``gbps_for_paper_reduction``).
"""

from typing import NamedTuple

from optinc_jax.network.model_cost import model_cost
from optinc_jax.network.volume import communication_volume
from optinc_jax.paper import LATENCY_REDUCTION_PERCENT, LATENCY_SETTINGS
from optinc_jax.validation import require_int, require_real

__all__ = ["LatencyAssumptions", "LatencyBreakdown", "latency_breakdown"]


class LatencyAssumptions(NamedTuple):
    """Everything the latency model assumes; defaults are the paper's stated setting.

    Attributes:
        device_tflops: peak compute of one device, TFLOP/s (paper: 60, an H100).
        utilization: fraction of the peak reached, in ``(0, 1]`` (paper: 0.6).
        transceivers: full-duplex optical transceivers per server (paper: 8).
        transceiver_gbps: bandwidth of one transceiver, Gb/s (paper: 800).
        gradient_bits: bits per gradient element on the wire, for both collectives
            (32: float32 gradients; the paper normalizes both to the same gradient).
        onn_latency_s: time of flight through the optical network per average, s
            (nanoseconds in practice; 0 by default).
        batch_per_server: examples per server per step; ``None`` for the model's default
            (:data:`optinc_jax.network.model_cost.LATENCY_MODELS`).
    """

    device_tflops: float = LATENCY_SETTINGS["gpu_tflops"]
    utilization: float = LATENCY_SETTINGS["utilization"]
    transceivers: int = int(LATENCY_SETTINGS["transceivers"])
    transceiver_gbps: float = LATENCY_SETTINGS["transceiver_gbps"]
    gradient_bits: int = 32
    onn_latency_s: float = 0.0
    batch_per_server: int | None = None


class LatencyBreakdown(NamedTuple):
    """One step's latency with ring all-reduce and with OptINC; ``to_json()`` is strict JSON.

    Attributes:
        model: ``"resnet50"`` or ``"llama"``.
        servers: ``N``.
        params: trainable parameters (gradient elements).
        batch_per_server: examples per server per step.
        flops_per_step: FLOPs of one forward + backward step on one server.
        compute_s: compute time of the step, s.
        ring_comm_s: ring all-reduce time, s.
        optinc_comm_s: OptINC time (gradient, exponent exchange and ONN), s.
        ring_factor: data a server sends with ring, over the gradient (measured).
        optinc_factor: the same for OptINC, exponent exchange included (measured).
        reduction: fraction of the ring iteration time that OptINC saves.
        paper_reduction: the paper's figure for this model at N = 4, or ``None``.
        batch_for_paper_reduction: per-server batch at which this model reaches the
            paper's reduction (compute scaled linearly in the batch), or ``None`` if no
            batch can (or there is no paper figure).
        gbps_for_paper_reduction: per-transceiver bandwidth at which it would, at this
            batch, or ``None``.
        assumptions: the :class:`LatencyAssumptions` used.
    """

    model: str
    servers: int
    params: int
    batch_per_server: int
    flops_per_step: float
    compute_s: float
    ring_comm_s: float
    optinc_comm_s: float
    ring_factor: float
    optinc_factor: float
    reduction: float
    paper_reduction: float | None
    batch_for_paper_reduction: float | None
    gbps_for_paper_reduction: float | None
    assumptions: LatencyAssumptions

    def to_json(self) -> dict:
        """JSON-ready dict, the assumptions as a nested object."""
        return {**self._asdict(), "assumptions": self.assumptions._asdict()}


def _validated(assumptions: LatencyAssumptions) -> LatencyAssumptions:
    a = assumptions
    return LatencyAssumptions(
        device_tflops=require_real("device_tflops", a.device_tflops, low=0, low_inclusive=False),
        utilization=require_real("utilization", a.utilization, low=0, high=1, low_inclusive=False),
        transceivers=require_int("transceivers", a.transceivers, 1),
        transceiver_gbps=require_real(
            "transceiver_gbps", a.transceiver_gbps, low=0, low_inclusive=False
        ),
        gradient_bits=require_int("gradient_bits", a.gradient_bits, 1, 64),
        onn_latency_s=require_real("onn_latency_s", a.onn_latency_s, low=0),
        batch_per_server=(
            None
            if a.batch_per_server is None
            else require_int("batch_per_server", a.batch_per_server, 1)
        ),
    )


def latency_breakdown(
    model: str, servers: int = 4, assumptions: LatencyAssumptions | None = None
) -> LatencyBreakdown:
    """Fig. 7(b): compute and communication time of one step, ring against OptINC.

    Args:
        model: ``"resnet50"`` (CIFAR-100) or ``"llama"`` (the paper's LLaMA-style model).
        servers: ``N >= 2``.
        assumptions: device, link and batch figures; ``None`` for the defaults.

    Returns:
        The :class:`LatencyBreakdown`.

    Raises:
        ValueError: on an unknown model, ``servers < 2`` or an invalid assumption.

    Examples:
        >>> row = latency_breakdown("llama", 4)
        >>> row.ring_factor, round(row.optinc_factor, 4)
        (1.5, 1.0039)
    """
    servers = require_int("servers", servers, 2)
    a = _validated(assumptions or LatencyAssumptions())
    cost = model_cost(model, a.batch_per_server)
    (volume,) = communication_volume(servers)
    ring_factor = volume.ring
    optinc_factor = volume.optinc + volume.optinc_exponent_overhead
    bytes_per_second = a.transceivers * a.transceiver_gbps * 1e9 / 8
    gradient_bytes = cost.params * a.gradient_bits / 8
    compute_s = cost.flops_per_step / (a.device_tflops * 1e12 * a.utilization)
    ring_s = ring_factor * gradient_bytes / bytes_per_second
    optinc_s = optinc_factor * gradient_bytes / bytes_per_second + a.onn_latency_s
    reduction = (ring_s - optinc_s) / (compute_s + ring_s)

    paper = LATENCY_REDUCTION_PERCENT.get(cost.model) if servers == 4 else None
    paper_reduction = None if paper is None else paper / 100
    batch_needed = gbps_needed = None
    if paper_reduction is not None:
        # r = (R - O) / (C + R): the compute C, or the link speed (R, O ~ 1 / bandwidth
        # apart from the ONN latency), at which the model reaches the paper's r.
        compute_needed = (ring_s - optinc_s) / paper_reduction - ring_s
        if compute_needed > 0:
            batch_needed = cost.batch * compute_needed / compute_s
        denominator = compute_s * paper_reduction + a.onn_latency_s
        saved_per_bandwidth = (ring_factor - optinc_factor) * gradient_bytes
        time_factor = saved_per_bandwidth - paper_reduction * ring_factor * gradient_bytes
        if time_factor > 0:
            # (ring_factor - optinc_factor) G / b - L = r (C + ring_factor G / b)
            needed_bytes_per_second = time_factor / denominator
            gbps_needed = needed_bytes_per_second * 8 / 1e9 / a.transceivers
    return LatencyBreakdown(
        model=cost.model,
        servers=servers,
        params=cost.params,
        batch_per_server=cost.batch,
        flops_per_step=cost.flops_per_step,
        compute_s=compute_s,
        ring_comm_s=ring_s,
        optinc_comm_s=optinc_s,
        ring_factor=ring_factor,
        optinc_factor=optinc_factor,
        reduction=reduction,
        paper_reduction=paper_reduction,
        batch_for_paper_reduction=batch_needed,
        gbps_for_paper_reduction=gbps_needed,
        assumptions=a,
    )
