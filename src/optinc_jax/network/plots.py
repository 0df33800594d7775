"""Figures of the network floor: Fig. 6 (data per server) and Fig. 7(b) (latency bars)."""

from collections.abc import Sequence
from pathlib import Path

from optinc_jax.network.latency import LatencyBreakdown
from optinc_jax.network.volume import CommunicationVolume

__all__ = ["plot_communication_volume", "plot_latency"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_communication_volume(rows: Sequence[CommunicationVolume], path: str | Path) -> None:
    """Fig. 6: data each server sends per average, ring against OptINC, per server count.

    Args:
        rows: from :func:`optinc_jax.network.volume.communication_volume`.
        path: PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    positions = range(len(rows))
    width = 0.38
    ring = [row.ring for row in rows]
    optinc = [row.optinc for row in rows]
    exponents = [row.optinc_exponent_overhead for row in rows]
    ax.bar([p - width / 2 for p in positions], ring, width, label="ring all-reduce")
    ax.bar([p + width / 2 for p in positions], optinc, width, label="OptINC gradient")
    ax.bar(
        [p + width / 2 for p in positions],
        exponents,
        width,
        bottom=optinc,
        label="OptINC exponent exchange",
        color="tab:red",
    )
    for p, value in zip(positions, ring, strict=True):
        ax.annotate(f"{value:.3f}", (p - width / 2, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(positions), [f"N = {row.servers}" for row in rows])
    ax.set_ylabel("data sent per server / gradient size")
    ax.set_title("communication per gradient average (byte counters)")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.set_ylim(0, 2.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(rows: Sequence[LatencyBreakdown], path: str | Path) -> None:
    """Fig. 7(b): compute and communication per step, normalised to the ring total.

    Args:
        rows: one :class:`~optinc_jax.network.latency.LatencyBreakdown` per model.
        path: PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    labels, compute, comm = [], [], []
    for row in rows:
        total = row.compute_s + row.ring_comm_s
        for name, seconds in (("ring", row.ring_comm_s), ("OptINC", row.optinc_comm_s)):
            labels.append(f"{row.model}\n{name}")
            compute.append(row.compute_s / total)
            comm.append(seconds / total)
    positions = range(len(labels))
    ax.bar(positions, compute, label="compute", color="tab:blue")
    ax.bar(positions, comm, bottom=compute, label="communication", color="tab:orange")
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylabel("latency / ring latency")
    reductions = ", ".join(f"{row.model} {100 * row.reduction:.2f} %" for row in rows)
    ax.set_title(f"per-step latency, N = {rows[0].servers}; OptINC saves {reductions}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
