"""Robustness of the deployed 8b4s ONN to physical non-idealities, with and without approximation.

Usage, from the repository root::

    python -m experiments.robustness [--config smoke|quick|full] [--quick] [--out DIR]
        [--models phase,dac,loss,loss-calibrated,splitter,crosstalk,receiver]
        [--trials N] [--seed S]
        [--no-progress]

For each network (``none``: every matrix mapped by SVD; ``approx``: the scenario's
approximated matrices, all six for 8b4s) it trains the ONN with the default
:class:`~optinc_jax.learning.config.TrainConfig` under ``OUT/<network>/`` (resumable: a
finished run is reused, an interrupted one resumes), compiles it onto MZI phases
(``OUT/<network>.circuit.npz``), verifies it through the phase-level simulation, and runs
the standard set of Monte Carlo sweeps (:data:`STANDARD_SWEEPS`), every trial exhaustive
over the dataset (one trial for the deterministic models: DAC, loss, crosstalk). It writes
``OUT/robustness.json`` (every result and, per sweep, which network tolerates more),
``OUT/robustness.md``, one figure per sweep ``OUT/robustness_<sweep>.png`` and the
overview ``OUT/robustness.png``.

Which network tolerates more, per sweep: the one whose mean accuracy drops below 99 %
later in the sweep (sweeps run from weak to strong; never dropping beats any drop); on a
tie, the one with the larger mean accuracy averaged over the sweep.

Budgets (:data:`PRESETS`): ``full`` runs 32 trials at every strength of
:data:`STANDARD_SWEEPS`; ``quick`` 8 trials at every other strength (about 15 minutes on
2 CPU cores, training included); ``smoke`` is for tests (pass a tiny scenario).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.deployment import (
    deploy,
    draw_robustness,
    plot_robustness,
    robustness_sweep,
    verify_circuit,
)
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import train_onn
from optinc_jax.photonics.circuit import save_circuit
from optinc_jax.photonics.nonideal import NOISE_MODELS
from optinc_jax.scenarios import Scenario

__all__ = [
    "NETWORKS",
    "PRESETS",
    "STANDARD_SWEEPS",
    "RobustnessConfig",
    "Sweep",
    "compare",
    "main",
    "preset",
    "run",
]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One standard sweep.

    Attributes:
        name: key of the sweep in the report (the model's name, or a variant of it).
        model: a key of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS`.
        strengths: in the model's unit, in sweep order.
        calibrate: recalibrate the electronic gains after each perturbation
            (:func:`~optinc_jax.photonics.circuit.calibrate_gains`).
    """

    name: str
    model: str
    strengths: tuple[float, ...]
    calibrate: bool = False


def _linspace(stop: float, count: int = 11) -> tuple[float, ...]:
    return tuple(float(f"{v:.12g}") for v in np.linspace(0.0, stop, count))


STANDARD_SWEEPS: tuple[Sweep, ...] = (
    Sweep("phase", "phase", _linspace(0.01)),
    Sweep("dac", "dac", (0, 16, 14, 12, 11, 10, 9, 8, 7, 6)),
    # Uncalibrated, any loss shifts every level at once (8b4s: 0.01 dB per MZI already
    # costs most of the accuracy); a chip calibrated after fabrication undoes the uniform
    # part with its electronic gains, and what remains is the path-dependent part.
    Sweep("loss", "loss", _linspace(0.01)),
    Sweep("loss-calibrated", "loss", _linspace(0.3), calibrate=True),
    Sweep("splitter", "splitter", _linspace(0.03)),
    Sweep("crosstalk", "crosstalk", _linspace(0.005)),
    Sweep("receiver", "receiver", _linspace(0.25)),
)
"""The standard set: every model of :data:`~optinc_jax.photonics.nonideal.NOISE_MODELS`,
the insertion loss with and without gain calibration. The ranges cover the drop of the
8b4s networks (measured on the default-trained ones)."""

NETWORKS: tuple[tuple[str, str | None], ...] = (("none", "none"), ("approx", None))
"""``(label, TrainConfig.approx)``: no approximation, and the scenario's own selection."""


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """Budget and scope of the robustness experiment.

    Attributes:
        preset: name of the preset it came from.
        scenario: scenario name or value.
        trials: Monte Carlo trials per strength.
        stride: use every ``stride``-th strength of each sweep (the first and last are
            always kept).
        models: sweeps to run by name, ``None`` for all of :data:`STANDARD_SWEEPS`.
        seed: PRNG seed of the trials.
        train_overrides: ``(field, value)`` pairs changed in the default
            :class:`~optinc_jax.learning.config.TrainConfig` (e.g. a tiny network's
            settings in tests); empty for the default training.
        progress: print progress and show training progress bars.
    """

    preset: str
    scenario: str | Scenario = "8b4s"
    trials: int = 32
    stride: int = 1
    models: tuple[str, ...] | None = None
    seed: int = 0
    train_overrides: tuple[tuple[str, Any], ...] = ()
    progress: bool = True

    def replace(self, **changes: Any) -> "RobustnessConfig":
        """A copy with fields changed."""
        return dataclasses.replace(self, **changes)

    def sweeps(self) -> tuple[Sweep, ...]:
        """The selected sweeps, thinned by :attr:`stride`."""
        chosen = []
        for sweep in STANDARD_SWEEPS:
            if self.models is not None and sweep.name not in self.models:
                continue
            values = sweep.strengths[:: self.stride]
            if values[-1] != sweep.strengths[-1]:
                values = (*values, sweep.strengths[-1])
            chosen.append(dataclasses.replace(sweep, strengths=values))
        return tuple(chosen)


PRESETS = {
    "smoke": RobustnessConfig("smoke", trials=2, stride=10, models=("phase", "receiver")),
    "quick": RobustnessConfig("quick", trials=8, stride=2),
    "full": RobustnessConfig("full"),
}
"""Named budgets: ``smoke`` (tests, with a tiny scenario), ``quick`` (2-core CPU), ``full``."""


def preset(name: str) -> RobustnessConfig:
    """The named preset.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def compare(results: dict[str, dict]) -> dict[str, Any]:
    """Which network tolerates more of one non-ideality.

    The one whose mean accuracy drops below 99 % later in the sweep order (sweeps run from
    weak to strong: increasing std or loss, decreasing DAC bits); never dropping beats any
    drop. On a tie, the one with the larger mean accuracy averaged over the sweep.

    Args:
        results: ``{network label: robustness_sweep result}`` of the same sweep.

    Returns:
        ``more_tolerant`` (a label, or ``"tie"``), ``reason``, and ``first_below_99`` and
        ``mean_accuracy`` (averaged over the sweep) per label.
    """
    labels = list(results)
    limit = {label: results[label]["first_below_99"] for label in labels}
    mean = {label: float(np.mean(results[label]["accuracy_mean"])) for label in labels}

    def position(label: str) -> int:
        strengths = results[label]["strengths"]
        return len(strengths) if limit[label] is None else strengths.index(limit[label])

    best = max(position(label) for label in labels)
    leaders = [label for label in labels if position(label) == best]
    reason = "drops below 99 % later in the sweep"
    if len(leaders) > 1:
        top = max(mean[label] for label in leaders)
        leaders = [label for label in leaders if mean[label] == top]
        reason = "same 99 % limit; larger mean accuracy over the sweep"
    return {
        "more_tolerant": leaders[0] if len(leaders) == 1 else "tie",
        "reason": reason,
        "first_below_99": limit,
        "mean_accuracy": mean,
    }


def _say(config: RobustnessConfig, message: str) -> None:
    if config.progress:
        print(message, flush=True)


def _markdown(document: dict) -> str:
    labels = list(document["networks"])
    lines = [
        "| sweep | unit | "
        + " | ".join(f"{label}: first < 99 %" for label in labels)
        + " | more tolerant |",
        "|---" * (3 + len(labels)) + "|",
    ]
    for name, entry in document["comparison"].items():
        unit = document["sweeps"][name][labels[0]]["unit"]
        limits = [entry["first_below_99"][label] for label in labels]
        cells = ["never" if v is None else f"{v:g}" for v in limits]
        lines.append(f"| {name} | {unit} | " + " | ".join(cells) + f" | {entry['more_tolerant']} |")
    networks = [
        f"- `{label}`: {net['verify']['layers']}, approx {net['verify']['approx_layers'] or 'none'}"
        f", {net['verify']['mzis']} MZIs, phase-level accuracy "
        f"{100 * net['verify']['accuracy']:.4f} %, max deviation "
        f"{net['verify']['max_abs_deviation']:.2e}, decision margin "
        f"{net['verify']['min_decision_margin']:.3f}"
        for label, net in document["networks"].items()
    ]
    return "\n".join([*networks, "", *lines, "", document["verdict"], ""])


def _overview(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(document["sweeps"])
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        results = document["sweeps"][name]
        draw_robustness(ax, list(results.values()), labels=list(results))
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"{document['scenario']}: exhaustive accuracy under non-idealities")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: RobustnessConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or reuse), deploy, verify and sweep both networks; write the report.

    Args:
        config: budget and scope, e.g. ``preset("quick")``.
        workdir: output directory; run directories go to ``workdir/<network>/``.

    Returns:
        The document written to ``workdir/robustness.json``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    networks, circuits = {}, {}
    for label, approx in NETWORKS:
        train_config = TrainConfig(
            scenario=config.scenario, approx=approx, **dict(config.train_overrides)
        )
        _say(config, f"[{label}] training (or reusing) {workdir / label}")
        result = train_onn(train_config, workdir / label, resume=True, progress=config.progress)
        circuit, _ = deploy(workdir / label)
        save_circuit(workdir / f"{label}.circuit.npz", circuit)
        verify = verify_circuit(circuit)
        _say(
            config,
            f"[{label}] trained {100 * result.evaluation.accuracy:.4f} % in {result.epochs} "
            f"epochs; phase-level {100 * verify['accuracy']:.4f} %, max deviation "
            f"{verify['max_abs_deviation']:.2e}, {verify['mzis']} MZIs",
        )
        networks[label] = {
            "train_accuracy": result.evaluation.accuracy,
            "epochs": result.epochs,
            "circuit": f"{label}.circuit.npz",
            "verify": verify,
        }
        circuits[label] = circuit
    sweeps, comparison = {}, {}
    for sweep in config.sweeps():
        sweeps[sweep.name] = {}
        for label, circuit in circuits.items():
            # A deterministic model gives every trial the same circuit: one suffices.
            trials = config.trials if NOISE_MODELS[sweep.model].random else 1
            result = robustness_sweep(
                circuit,
                sweep.model,
                sweep.strengths,
                trials,
                config.seed,
                calibrate=sweep.calibrate,
            )
            sweeps[sweep.name][label] = result
            _say(
                config,
                f"[{label}] {sweep.name}: first below 99 % at {result['first_below_99']} "
                f"{result['unit']} ({result['seconds']:.1f} s)",
            )
        comparison[sweep.name] = compare(sweeps[sweep.name])
        plot_robustness(
            list(sweeps[sweep.name].values()),
            workdir / f"robustness_{sweep.name}.png",
            labels=list(sweeps[sweep.name]),
        )
    wins = {label: 0 for label in networks}
    for entry in comparison.values():
        if entry["more_tolerant"] in wins:
            wins[entry["more_tolerant"]] += 1
    ranked = sorted(wins, key=wins.get, reverse=True)
    if len(ranked) > 1 and wins[ranked[0]] == wins[ranked[1]]:
        verdict = f"Neither network tolerates more overall ({wins})."
    else:
        verdict = (
            f"The {ranked[0]!r} network tolerates more: it is ahead for "
            f"{wins[ranked[0]]} of {len(comparison)} non-idealities ({wins})."
        )
    scenario = config.scenario if isinstance(config.scenario, str) else config.scenario.name
    document = {
        "scenario": scenario,
        "config": {**dataclasses.asdict(config), "scenario": scenario},
        "sweep_definitions": [dataclasses.asdict(sweep) for sweep in config.sweeps()],
        "networks": networks,
        "sweeps": sweeps,
        "comparison": comparison,
        "verdict": verdict,
        "seconds": time.perf_counter() - start,
    }
    write_json_atomically(workdir / "robustness.json", document)
    (workdir / "robustness.md").write_text(_markdown(document))
    _overview(document, workdir / "robustness.png")
    _say(config, verdict)
    return document


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.robustness --help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --config quick")
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    names = [sweep.name for sweep in STANDARD_SWEEPS]
    parser.add_argument("--models", help="comma-separated subset of " + ",".join(names))
    parser.add_argument("--trials", type=int, help="Monte Carlo trials per strength")
    parser.add_argument("--seed", type=int, help="PRNG seed of the trials")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = preset("quick" if args.quick else args.config)
    if args.models:
        models = tuple(args.models.split(","))
        unknown = sorted(set(models) - set(names))
        if unknown:
            parser.error(f"unknown sweeps {unknown}; choose from {', '.join(names)}")
        config = config.replace(models=models)
    if args.trials is not None:
        if args.trials < 1:
            parser.error(f"--trials must be >= 1, got {args.trials}")
        config = config.replace(trials=args.trials)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.no_progress:
        config = config.replace(progress=False)
    run(config, args.out)
    print((args.out / "robustness.md").read_text())


if __name__ == "__main__":
    main()
