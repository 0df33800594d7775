"""The cascade (paper section III-C): 16 servers through five 4-server OptINC units.

Usage, from the repository root::

    python -m experiments.cascade [--config smoke|quick|full] [--quick] [--out DIR]
        [--vectors N] [--no-progress]

Trains the exact cascade's two levels (Table I's 8b4s ONN with two approximated 64 x 64
matrices inserted, every matrix approximated) on their modified exhaustive datasets with
the existing trainer under ``OUT/exact/level<l>/`` (resumable: finished levels are reused,
interrupted ones resume), then measures: every level's projected exhaustive accuracy; at
least ``vectors`` random 16-server vectors (block-quantized heavy-tailed gradients, and
uniform values) through the whole chain with regenerated links, against
``floor(sum u / 16)``; the naive cascade (perfect basic units flooring at both levels)
on the same vectors; the analog link (no receiver between the levels): level 1's raw
output deviations carried into level 2's inputs beside level 2's measured input margin,
and the chain's error rate with it; the area overhead against Table I's 8b4s beside the
paper's "about 10.5 %"; and a deeper cascade (64 servers in three levels of 4: datasets,
reachable points, the ideal chain; and a tiny 2-bit three-level cascade trained end to
end, checked over all server combinations). Writes ``OUT/cascade.json`` and
``OUT/cascade.png``.

Budgets: ``full`` trains both levels with the default config (130 epochs, one pass per
epoch); ``quick`` trains level 1 with the default config and level 2 (134,017 samples) for
170 epochs of one pass with stage 2 from epoch 100 (measured on the 2-core CPU: level 1
at projected 100 % after 117 epochs, 99 s; level 2 after 153 epochs, about 7 minutes; the
whole run about 11 minutes); ``smoke`` is a 4-bit 2 x 2 cascade for tests.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from optinc_jax import paper
from optinc_jax.encoding.cascade_dataset import reachable_inputs
from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.network.cascade import (
    cascade_area,
    cascade_forward,
    check_cascade,
    ideal_levels,
    level_input_margin,
    level_output_deviation,
    level_scenario,
    link_input_deviation,
    make_cascade,
    train_cascade,
)
from optinc_jax.scenarios import make_scenario

__all__ = ["PRESETS", "CascadeConfig", "main", "preset", "run"]


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
    """Budget and scope of the cascade experiment.

    Attributes:
        preset: name of the preset it came from.
        bits: servers' bit width.
        fanins: the cascade's fan-ins.
        inputs: ONN data inputs.
        base_layers: the base unit's widths (``None``: Table I's 8b4s).
        inserted: inserted widths (``None``: two square matrices).
        level_overrides: per level, ``(field, value)`` pairs changed in the default
            :class:`~optinc_jax.learning.config.TrainConfig`.
        vectors: random vectors per end-to-end check.
        analog_vectors: random vectors of the analog-link check.
        chunk_size: vectors per jitted chunk.
        deep_fanins: the deeper cascade checked with ideal units.
        deep_vectors: its random vectors.
        seed: PRNG seed of the checks.
        progress: print progress and show training bars.
    """

    preset: str
    bits: int = 8
    fanins: tuple[int, ...] = (4, 4)
    inputs: int = 4
    base_layers: tuple[int, ...] | None = None
    inserted: tuple[int, ...] | None = None
    level_overrides: tuple[tuple[tuple[str, Any], ...], ...] = ((), ())
    vectors: int = 1_000_000
    analog_vectors: int = 1 << 18
    chunk_size: int = 1 << 14
    deep_fanins: tuple[int, ...] = (4, 4, 4)
    deep_vectors: int = 1 << 17
    seed: int = 0
    progress: bool = True

    def replace(self, **changes: Any) -> "CascadeConfig":
        """A copy with fields changed."""
        return dataclasses.replace(self, **changes)


_QUICK_LEVEL2 = (("epochs", 170), ("switch_epoch", 100))
"""Level 2 of ``quick``: one pass per epoch (1,047 steps of 128), a longer schedule than the
default's 130 epochs (measured: 130 epochs end at 99.9985 %, two wrong grid points)."""

_TINY = (
    ("epochs", 100),
    ("batch_size", 16),
    ("steps_per_epoch", 100),
    ("switch_epoch", 70),
    ("learning_rate", 1e-2),
    ("eval_every", 2),
    ("checkpoint_every", 200),
)

PRESETS = {
    "smoke": CascadeConfig(
        "smoke",
        bits=4,
        fanins=(2, 2),
        inputs=2,
        base_layers=(2, 64, 64, 2),
        inserted=(),
        level_overrides=(_TINY, _TINY),
        vectors=4096,
        analog_vectors=4096,
        chunk_size=2048,
        deep_fanins=(2, 2, 2),
        deep_vectors=2048,
    ),
    "quick": CascadeConfig("quick", level_overrides=((), _QUICK_LEVEL2)),
    "full": CascadeConfig("full"),
}
"""Named budgets: ``smoke`` (tests), ``quick`` (2-core CPU), ``full`` (accelerator)."""


def preset(name: str) -> CascadeConfig:
    """The named preset.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def _say(config: CascadeConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)


def _scenarios(config: CascadeConfig, cascade):
    base = "8b4s"
    if config.base_layers is not None:
        base = make_scenario(
            "base",
            bits=config.bits,
            servers=cascade.fanins[0],
            layers=config.base_layers,
            inputs=config.inputs,
        )
    approx = "all" if config.base_layers is None else (2,)
    return base, [
        level_scenario(cascade, level, base=base, inserted=config.inserted, approx=approx)
        for level in range(1, cascade.num_levels + 1)
    ]


def _deep(config: CascadeConfig, workdir: Path) -> dict[str, Any]:
    """A deeper cascade: datasets and ideal chain; a tiny three-level one trained."""
    deep = make_cascade(config.bits, config.deep_fanins, inputs=config.inputs)
    levels = []
    for level in range(1, deep.num_levels + 1):
        dataset = deep.level_dataset(level)
        reachable = int(jnp.sum(reachable_inputs(dataset, jnp.arange(dataset.size))))
        levels.append(
            {"level": level, "size": dataset.size, "reachable": reachable, "bits": dataset.bits}
        )
    ideal = check_cascade(
        deep,
        ideal_levels(deep),
        vectors=config.deep_vectors,
        chunk_size=min(config.chunk_size, config.deep_vectors),
        seed=config.seed,
        source="uniform",
    )
    tiny = make_cascade(2, (2, 2, 2), inputs=1)
    base = make_scenario("tiny", bits=2, servers=2, layers=(1, 64, 64, 1), inputs=1)
    scenarios = [
        level_scenario(tiny, level, base=base, inserted=(), approx=(2,)) for level in (1, 2, 3)
    ]
    train = TrainConfig(**dict(_TINY)).replace(batch_size=8, learning_rate=3e-3)
    trained, results = train_cascade(
        tiny, workdir / "deep_tiny", configs=train, scenarios=scenarios, progress=False
    )
    u = np.indices((4,) * 8).reshape(8, -1).T.astype(np.int32)
    got = np.asarray(cascade_forward(tiny, trained, jnp.asarray(u)))
    return {
        "fanins": list(deep.fanins),
        "servers": deep.servers,
        "levels": levels,
        "ideal_chain": ideal,
        "trained_tiny": {
            "bits": 2,
            "fanins": [2, 2, 2],
            "level_accuracies": [r.evaluation.accuracy for r in results],
            "server_combinations": len(u),
            "errors": int(np.sum(got != u.sum(1) // 8)),
        },
    }


def _figure(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    checks = document["checks"]
    labels, rates = [], []
    for name in ("naive_gradients", "naive_uniform", "exact_gradients", "exact_uniform", "analog"):
        labels.append(name.replace("_", "\n"))
        rates.append(checks[name]["error_rate"])
    bars = left.bar(labels, [max(rate, 1e-7) for rate in rates], color="C0")
    for bar, name, rate in zip(bars, labels, rates, strict=True):
        count = checks[name.replace("\n", "_")]["vectors_checked"]
        left.annotate(
            f"{rate:.3g}\n({count:,} vectors)",
            (bar.get_x() + bar.get_width() / 2, max(rate, 1e-7)),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    left.set_yscale("log")
    left.set_ylim(1e-7, 3)
    left.set_ylabel("error rate (0 drawn at 1e-7)")
    left.set_title("cascade vs floor(sum u / C)")
    accuracies = document["level_accuracies"]
    right.bar([f"level {i + 1}" for i in range(len(accuracies))], [100 * a for a in accuracies])
    for i, accuracy in enumerate(accuracies):
        right.annotate(f"{100 * accuracy:.4f} %", (i, 100 * accuracy), ha="center", va="bottom")
    right.set_ylim(min(90.0, 100 * min(accuracies) - 1), 101)
    right.set_ylabel("projected exhaustive accuracy (%)")
    right.set_title("accuracy per level")
    fig.suptitle(
        f"{document['bits']}-bit cascade {document['fanins']}: exact vs naive "
        f"(area overhead {100 * document['area_overhead']:.1f} %, paper "
        f"{document['paper_area_overhead_percent']} %)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: CascadeConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or reuse) both levels, check the chain, write ``cascade.json`` / ``.png``.

    Args:
        config: budget and scope, e.g. ``preset("quick")``.
        workdir: output directory; level runs go to ``workdir/exact/level<l>/``.

    Returns:
        The document written to ``workdir/cascade.json``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings = {}
    cascade = make_cascade(config.bits, config.fanins, inputs=config.inputs)
    naive = cascade._replace(variant="naive")
    base, scenarios = _scenarios(config, cascade)
    configs = [TrainConfig(**dict(overrides)) for overrides in config.level_overrides]
    _say(config, f"training (or reusing) {[s.layers_string for s in scenarios]} in {workdir}")
    tic = time.perf_counter()
    levels, results = train_cascade(
        cascade, workdir / "exact", configs=configs, scenarios=scenarios, progress=config.progress
    )
    timings["train_or_reuse"] = time.perf_counter() - tic
    accuracies = [r.evaluation.accuracy for r in results]
    _say(config, f"level accuracies {accuracies} after {[r.epochs for r in results]} epochs")

    checks = {}
    tic = time.perf_counter()
    for name, chain, chain_levels in (
        ("exact", cascade, levels),
        ("naive", naive, ideal_levels(naive)),
    ):
        for source in ("gradients", "uniform"):
            checks[f"{name}_{source}"] = check_cascade(
                chain,
                chain_levels,
                vectors=config.vectors,
                chunk_size=config.chunk_size,
                seed=config.seed,
                source=source,
            )
            _say(config, f"{name} {source}: {checks[f'{name}_{source}']['error_rate']:.6g}")
    timings["end_to_end"] = time.perf_counter() - tic

    tic = time.perf_counter()
    checks["analog"] = check_cascade(
        cascade,
        levels,
        vectors=config.analog_vectors,
        chunk_size=min(config.chunk_size, config.analog_vectors),
        seed=config.seed,
        link="analog",
    )
    margins = []
    for level in range(2, cascade.num_levels + 1):
        deviation = level_output_deviation(levels[level - 2], cascade.level_dataset(level - 1))
        carried = link_input_deviation(cascade, level - 1, deviation)
        margin = level_input_margin(levels[level - 1], cascade.level_dataset(level))
        margins.append(
            {
                "level": level,
                "input_margin": margin,
                "previous_raw_output_deviation": deviation.tolist(),
                "carried_input_deviation": carried.tolist(),
                "analog_link_safe": bool(np.all(carried < np.array(margin["per_input"]))),
            }
        )
        _say(config, f"level {level}: margin {margin['per_input']}, carried {carried.tolist()}")
    timings["analog_and_margin"] = time.perf_counter() - tic

    area = cascade_area(cascade, scenarios, base=base)
    tic = time.perf_counter()
    deep = _deep(config, workdir)
    timings["deep"] = time.perf_counter() - tic
    document = {
        "preset": config.preset,
        "bits": config.bits,
        "fanins": list(config.fanins),
        "servers": cascade.servers,
        "link": "regenerate",
        "exact_error_rate": checks["exact_gradients"]["error_rate"],
        "naive_error_rate": checks["naive_gradients"]["error_rate"],
        "vectors_checked": checks["exact_gradients"]["vectors_checked"]
        + checks["exact_uniform"]["vectors_checked"],
        "level_accuracies": accuracies,
        "level_epochs": [r.epochs for r in results],
        "level_records": [
            {k: r.record[k] for k in ("scenario", "layers", "approx", "correct", "total")}
            for r in results
        ],
        "area_overhead": area["overhead_per_unit"],
        "paper_area_overhead_percent": paper.CASCADE_AREA_OVERHEAD_PERCENT,
        "area": area,
        "checks": checks,
        "analog_link": margins,
        "deep": deep,
        "timings_seconds": timings,
        "config": dataclasses.asdict(config),
        "seconds": time.perf_counter() - start,
    }
    write_json_atomically(workdir / "cascade.json", document)
    _figure(document, workdir / "cascade.png")
    _say(config, f"wrote {workdir / 'cascade.json'} in {document['seconds']:.0f} s")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.cascade --help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --config quick")
    parser.add_argument("--out", type=Path, default=Path("runs/cascade"))
    parser.add_argument("--vectors", type=int, help="random vectors per end-to-end check")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = preset("quick" if args.quick else args.config)
    if args.vectors is not None:
        if args.vectors < 1:
            parser.error(f"--vectors must be >= 1, got {args.vectors}")
        config = config.replace(vectors=args.vectors)
    if args.no_progress:
        config = config.replace(progress=False)
    run(config, args.out)


if __name__ == "__main__":
    main()
