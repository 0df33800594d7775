"""Benchmark the simulated collectives against ``lax.pmean`` on one gradient pytree.

One call of each averaging method inside ``jax.jit(jax.shard_map(...))`` over ``N`` servers
(one device each; on a CPU host the devices are virtual, forced with
``--xla_force_host_platform_device_count``), on a gradient pytree of ``--params`` float32
elements per server split into several leaves of odd shapes. Timed in the same run, after
compilation (median of ``--repeats`` rounds in which the methods take turns, results
blocked):

- ``lax.pmean``: JAX's own all-reduce, the reference of every ratio;
- ``optinc ideal``: ``optinc_jax.pmean(mode="ideal")``, 8 bits, 256-element blocks;
- ``optinc inject``: ``mode="inject"`` with a synthetic error model (rate ``1e-4``, errors
  of +-1 LSB, even shares; the per-element draw costs the same whatever the rate);
- ``optinc onn``: ``mode="onn"`` with the table of an exact unit (``exact_onn_table``; a
  trained network's table has the same size and costs the same: no training is needed to
  time the lookup);
- ``ring float32`` and ``ring 8-bit``: the simulated ring all-reduce (``ppermute``).

Usage: ``python -m benchmarks.bench_collective --out DIR [--params 25000000] [--servers 4]``.
Writes ``DIR/bench_collective.json`` and ``DIR/bench_collective.png``.
"""

import argparse
import functools
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from benchmarks import force_host_devices, machine_environment


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the JSON and the figure")
    parser.add_argument("--params", type=int, default=25_000_000, help="elements per server")
    parser.add_argument("--servers", type=int, default=4, help="servers N (devices)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method")
    return parser.parse_args(argv)


if __name__ == "__main__":  # before JAX is imported, so the device count takes effect
    force_host_devices(_parse_args(sys.argv[1:]).servers)

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, PartitionSpec  # noqa: E402

from optinc_jax.learning.reporting import write_json_atomically  # noqa: E402
from optinc_jax.network.collective import ErrorModel, exact_onn_table, pmean  # noqa: E402
from optinc_jax.network.ring import ring_pmean  # noqa: E402

AXIS = "servers"


def leaf_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """Several leaves of odd shapes holding ``params`` elements in total."""
    width = 1031  # prime: no leaf is a whole number of 256-element blocks
    shapes = {}
    remaining = params
    for name, fraction in (("embed", 0.4), ("mlp_in", 0.3), ("mlp_out", 0.2)):
        rows = max(1, int(params * fraction) // width)
        shapes[name] = (rows, width)
        remaining -= rows * width
    shapes["norm_scale"] = (777,)
    shapes["bias"] = (max(1, remaining - 777),)
    return shapes


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
    """Median and min wall time of each ``fn()`` (blocked), the methods taking turns.

    Every method is called once first (compilation), then ``repeats`` rounds call each
    method once in turn, so that a change of the machine's load hits all of them alike.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "repeats": repeats}
        for name, t in times.items()
    }


def methods(servers: int) -> dict[str, Callable]:
    """Per-server averaging functions ``tree -> tree`` to time."""
    errors = ErrorModel(
        servers=servers, bits=8, rate=1e-4, values=(1, -1), probabilities=(0.5, 0.5)
    )
    table = exact_onn_table(8, servers)
    key = jax.random.key(0)
    return {
        "lax.pmean": lambda g: jax.lax.pmean(g, AXIS),
        "optinc ideal": lambda g: pmean(g, AXIS),
        "optinc inject": lambda g: pmean(g, AXIS, mode="inject", errors=errors, key=key),
        "optinc onn": lambda g: pmean(g, AXIS, mode="onn", table=table),
        "ring float32": lambda g: ring_pmean(g, AXIS),
        "ring 8-bit": lambda g: ring_pmean(g, AXIS, bits=8),
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = [row["method"] for row in rows]
    times = [row["median_s"] * 1e3 for row in rows]
    colors = ["tab:gray"] + ["tab:blue" if "optinc" in n else "tab:orange" for n in names[1:]]
    bars = ax.bar(names, times, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.annotate(
            f"{row['ratio_vs_pmean']:.1f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylim(0, max(times) * 1.15)  # room for the ratios above the bars
    ax.set_ylabel("time per call [ms]")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, params: int, servers: int, repeats: int) -> dict:
    devices = jax.devices()
    if len(devices) < servers:
        devices = jax.devices("cpu")
    if len(devices) < servers:
        raise SystemExit(f"{servers} servers need {servers} devices, found {len(devices)}")
    mesh = Mesh(np.array(devices[:servers]), (AXIS,))
    spec = PartitionSpec(AXIS)
    shapes = leaf_shapes(params)
    keys = jax.random.split(jax.random.key(1), len(shapes))
    sharding = jax.sharding.NamedSharding(mesh, spec)
    grads = {
        name: jax.device_put(
            jax.random.normal(key, (servers, *shape), jnp.float32) * 1e-3, sharding
        )
        for key, (name, shape) in zip(keys, shapes.items(), strict=True)
    }
    mapped = {}
    for name, fn in methods(servers).items():

        def per_server(tree, fn=fn):
            squeezed = jax.tree.map(lambda x: x[0], tree)
            return jax.tree.map(lambda x: x[None], fn(squeezed))

        mapped[name] = jax.jit(
            jax.shard_map(per_server, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
        )
    timings = measure_interleaved(
        {name: functools.partial(fn, grads) for name, fn in mapped.items()}, repeats
    )
    reference = mapped["lax.pmean"](grads)
    rows = []
    for name, fn in mapped.items():
        result = fn(grads)
        error = max(float(jnp.max(jnp.abs(result[k] - reference[k]))) for k in shapes)
        del result
        rows.append({"method": name, **timings[name], "max_abs_diff_vs_pmean": error})
    base = rows[0]["median_s"]
    for row in rows:
        row["ratio_vs_pmean"] = row["median_s"] / base
        print(
            f"{row['method']:<15} {row['median_s'] * 1e3:9.1f} ms  {row['ratio_vs_pmean']:5.2f}x"
            f"   max|diff vs lax.pmean| {row['max_abs_diff_vs_pmean']:.3g}"
        )
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "params_per_server": sum(int(np.prod(s)) for s in shapes.values()),
        "leaves": {k: list(v) for k, v in shapes.items()},
        "servers": servers,
        "bits": 8,
        "block_size": 256,
        "rows": rows,
        "environment": {
            **machine_environment(),
            "devices": servers,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        },
    }
    write_json_atomically(out / "bench_collective.json", report)
    title = (
        f"{report['params_per_server'] / 1e6:.1f}M float32 params per server, N = {servers} "
        f"({devices[0].platform}, {os.cpu_count()} cores); ratio = time / lax.pmean"
    )
    plot(rows, out / "bench_collective.png", title)
    print(f"wrote {out / 'bench_collective.json'} and {out / 'bench_collective.png'}")
    return report


def main(argv=None) -> None:
    args = _parse_args(argv)
    run(Path(args.out), args.params, args.servers, args.repeats)


if __name__ == "__main__":
    main()
