"""Training steps per second of a small model through each all-reduce: the simulation's cost.

The data-parallel training step of ``experiments/train_distributed.py`` (forward, backward,
gradient all-reduce, optimizer update, under ``jax.jit(jax.shard_map(...))`` over ``N``
servers, one device each; virtual CPU devices on a CPU host), timed in the same run for
every all-reduce of :data:`optinc_jax.ALLREDUCES`:

- ``exact``: ``lax.pmean``, the reference of every ratio;
- ``ring``: the simulated ring all-reduce (``ppermute`` reduce-scatter and all-gather);
- ``optinc-ideal``: block quantization to 8 bits, the ideal unit's floor average;
- ``optinc-inject``: the worst Table II row's errors drawn per element (a 16-bit unit);
- ``optinc-onn``: the lookup table of an exact 8-bit unit (``exact_onn_table``; a trained
  network's table has the same size and costs the same, so no training is needed to time
  it).

Each method keeps its own training state; after one compiling call, ``--repeats`` rounds
run ``--steps`` steps of every method in turn (so a change of the machine's load hits all
of them alike), on the same prefetched batches, and the median round gives steps per second.
The overhead per step is the method's time per step minus ``exact``'s.

Usage: ``python -m benchmarks.bench_distributed --out DIR [--model resnet_small]
[--servers 4] [--steps 50] [--repeats 5]``. Writes ``DIR/bench_distributed.json`` and
``DIR/bench_distributed.png``.
"""

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from benchmarks import force_host_devices, machine_environment


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the JSON and the figure")
    parser.add_argument("--model", default="resnet_small", help="a distributed model's name")
    parser.add_argument("--servers", type=int, default=4, help="servers N (devices)")
    parser.add_argument("--steps", type=int, default=50, help="steps per method per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    return parser.parse_args(argv)


if __name__ == "__main__":  # before JAX is imported, so the device count takes effect
    force_host_devices(_parse_args(sys.argv[1:]).servers)

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import optinc_jax as oi  # noqa: E402
from optinc_jax.learning.reporting import write_json_atomically  # noqa: E402

PREFETCHED_BATCHES = 4
"""Distinct batches cycled through by every method (loaded once, before timing)."""


def allreduces(servers: int) -> dict[str, object]:
    """Every all-reduce of :data:`optinc_jax.ALLREDUCES`, built for ``servers`` servers."""
    out = {}
    for name in oi.ALLREDUCES:
        onn = oi.exact_onn_table(8, servers) if name == "optinc-onn" else None
        out[name] = oi.make_allreduce(name, onn=onn)
    return out


class _Trainer:
    """One method's training state and jitted step; ``run(k)`` takes ``k`` steps."""

    def __init__(self, config, data, mesh, allreduce, batches):
        model = oi.build_distributed_model(config.model, data, seed=0)
        tx = oi.make_distributed_optimizer(
            config.model, config.learning_rate, config.warmup_fraction, config.steps
        )
        graphdef, state = oi.init_data_parallel_state(model, tx)
        self.state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        self.step_fn = oi.make_train_step(graphdef, tx, allreduce, mesh)
        self.key = jax.random.key(0)
        self.batches = batches
        self.step = 0

    def run(self, steps: int) -> float:
        """Takes ``steps`` steps; returns the last loss (blocks until it is computed)."""
        loss = None
        for _ in range(steps):
            batch = self.batches[self.step % len(self.batches)]
            self.state, loss = self.step_fn(self.state, batch, np.int32(self.step), self.key)
            self.step += 1
        return float(loss)


def measure(trainers: dict[str, _Trainer], steps: int, repeats: int) -> dict[str, dict]:
    """Median seconds per step of each method, the methods taking turns every round."""
    first_call = {}
    for name, trainer in trainers.items():  # compiles
        start = time.perf_counter()
        trainer.run(1)
        first_call[name] = time.perf_counter() - start
    rounds: dict[str, list[float]] = {name: [] for name in trainers}
    losses = {}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            losses[name] = trainer.run(steps)
            rounds[name].append((time.perf_counter() - start) / steps)
    return {
        name: {
            "seconds_per_step": statistics.median(rounds[name]),
            "min_seconds_per_step": min(rounds[name]),
            "first_call_s": first_call[name],
            "final_loss": losses[name],
        }
        for name in trainers
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Bar chart of steps per second, the overhead ratio written above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = [row["allreduce"] for row in rows]
    rates = [row["steps_per_second"] for row in rows]
    colors = [
        "tab:gray" if n == "exact" else "tab:blue" if "optinc" in n else "tab:orange" for n in names
    ]
    bars = ax.bar(names, rates, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.annotate(
            f"{row['time_ratio_vs_exact']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylim(0, max(rates) * 1.15)
    ax.set_ylabel("training steps per second")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    out: Path, model: str = "resnet_small", servers: int = 4, steps: int = 50, repeats: int = 5
) -> dict:
    """Times every all-reduce's training step; writes the JSON and the figure.

    Args:
        out: output directory.
        model: a distributed model's name (its CPU recipe: batch per server, optimizer).
        servers: simulated servers (devices).
        steps: steps per method per timed round.
        repeats: timed rounds.

    Returns:
        The report written to ``out/bench_distributed.json``.
    """
    config = oi.DistributedConfig(model=model, servers=servers).resolved()
    mesh = oi.server_mesh(servers)
    data = oi.load_training_data(config)
    stream = oi.train_batches(
        data,
        batch_size=config.batch_per_server * servers,
        seed=0,
        mesh=mesh,
        seq_len=config.seq_len,
    )
    batches = [next(stream) for _ in range(PREFETCHED_BATCHES)]
    methods = allreduces(servers)
    trainers = {
        name: _Trainer(config, data, mesh, allreduce, batches)
        for name, allreduce in methods.items()
    }
    timings = measure(trainers, steps, repeats)
    base = timings["exact"]["seconds_per_step"]
    rows = []
    for name, timing in timings.items():
        seconds = timing["seconds_per_step"]
        rows.append(
            {
                "allreduce": name,
                "bits": methods[name].bits,
                **timing,
                "steps_per_second": 1.0 / seconds,
                "time_ratio_vs_exact": seconds / base,
                "overhead_ms_per_step": (seconds - base) * 1e3,
            }
        )
        print(
            f"{name:<14} {1.0 / seconds:7.2f} steps/s  {seconds / base:5.2f}x exact  "
            f"overhead {(seconds - base) * 1e3:+7.2f} ms/step"
        )
    devices = mesh.devices.flat
    report = {
        "model": model,
        "parameters": oi.parameter_count(oi.build_distributed_model(model, data, seed=0)),
        "servers": servers,
        "batch_per_server": config.batch_per_server,
        "data": data.describe(),
        "steps_per_round": steps,
        "repeats": repeats,
        "rows": rows,
        "environment": {
            **machine_environment(),
            "devices": servers,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "bench_distributed.json", report)
    title = (
        f"{model} ({report['parameters'] / 1e3:.0f}k params), N = {servers}, batch "
        f"{config.batch_per_server}/server ({devices[0].platform}, {os.cpu_count()} cores); "
        "ratio = time / exact"
    )
    plot(rows, out / "bench_distributed.png", title)
    print(f"wrote {out / 'bench_distributed.json'} and {out / 'bench_distributed.png'}")
    return report


def main(argv=None) -> None:
    """Command-line entry point."""
    args = _parse_args(argv)
    run(Path(args.out), args.model, args.servers, args.steps, args.repeats)


if __name__ == "__main__":
    main()
