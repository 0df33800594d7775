"""Noise-aware fine-tuning of the deployed 8b4s ONN: tolerated noise before and after.

Usage, from the repository root::

    python -m experiments.noise_finetune [--config smoke|quick|full] [--quick] [--out DIR]
        [--run-dir RUN] [--model phase] [--strength S] [--epochs E] [--sweep 0:0.01:11]
        [--trials N] [--seed S] [--no-progress]

It takes the trained run directory ``--run-dir`` (default ``OUT/run/``), training the ONN
there with the default :class:`~optinc_jax.learning.config.TrainConfig` first if it holds
no ``result.json`` (resumable); compiles it onto MZI phases (``OUT/circuit.npz``);
measures the Monte Carlo robustness sweep of the fine-tuning's non-ideality
(:func:`~optinc_jax.learning.deployment.robustness_sweep`, every trial exhaustive);
fine-tunes the circuit's phases, attenuators, gains and biases under that noise at one
strength (:func:`~optinc_jax.learning.finetune.finetune_circuit`; not in the paper); saves
``OUT/circuit_finetuned.npz``, verifies the file as written through the phase-level
simulation and sweeps it again. It writes ``OUT/noise_finetune.json`` (strict JSON: both
sweeps, the strengths at which the mean accuracy first drops below 100 % and below 99 %
before and after, the 99 % crossing interpolated between sweep points, the fine-tuning
history), ``OUT/noise_finetune.md`` and
``OUT/noise_finetune.png`` (accuracy against strength before and after, and the
fine-tuning's epochs).

The sweeps use the seed ``sweep_seed``, other than the fine-tuning's: its checkpoint
selection looked at the chips of its own seed, so they would flatter the result.

Budgets (:data:`PRESETS`): ``quick`` (8 trials at 11 strengths, 10 epochs of 40 steps;
about 7 minutes on 2 CPU cores, training included), ``full`` (32 trials at 11 strengths,
20 epochs), ``smoke`` (tests: a short fine-tuning and 3-point sweeps).
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
    parse_sweep,
    robustness_sweep,
    verify_circuit,
)
from optinc_jax.learning.finetune import NoiseFinetuneConfig, finetune_circuit
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import train_onn
from optinc_jax.photonics.circuit import load_circuit, save_circuit
from optinc_jax.photonics.nonideal import NOISE_MODELS
from optinc_jax.scenarios import Scenario

__all__ = ["PRESETS", "NoiseFinetuneExperiment", "main", "preset", "run"]


def _linspace(stop: float, count: int) -> tuple[float, ...]:
    return tuple(float(f"{v:.12g}") for v in np.linspace(0.0, stop, count))


DEFAULT_FINETUNE = NoiseFinetuneConfig()
"""The fine-tuning of the presets: phase error at 0.004 rad (the library's defaults)."""


@dataclasses.dataclass(frozen=True)
class NoiseFinetuneExperiment:
    """Budget and scope of the experiment.

    Attributes:
        preset: name of the preset it came from.
        scenario: scenario name or value of the training (when the run is trained here).
        run_dir: the run directory (``None``: ``OUT/run``); reused if it holds a
            ``result.json``, else trained with the default config and ``scenario``.
        finetune: the fine-tuning (model, strength, epochs, ...).
        strengths: strengths of the before / after sweeps, in the model's unit.
        trials: Monte Carlo trials per strength of the sweeps.
        sweep_seed: seed of the sweeps (not the fine-tuning's selection seed).
        train_overrides: ``(field, value)`` pairs changed in the default
            :class:`~optinc_jax.learning.config.TrainConfig` (tiny networks in tests).
        progress: print progress and show the training progress bar.
    """

    preset: str
    scenario: str | Scenario = "8b4s"
    run_dir: str | None = None
    finetune: NoiseFinetuneConfig = DEFAULT_FINETUNE
    strengths: tuple[float, ...] = _linspace(0.01, 11)
    trials: int = 32
    sweep_seed: int = 1
    train_overrides: tuple[tuple[str, Any], ...] = ()
    progress: bool = True

    def replace(self, **changes: Any) -> "NoiseFinetuneExperiment":
        """A copy with fields changed."""
        return dataclasses.replace(self, **changes)


PRESETS = {
    "smoke": NoiseFinetuneExperiment(
        "smoke",
        finetune=NoiseFinetuneConfig(
            strength=0.02, epochs=2, steps_per_epoch=4, batch_size=16, trials=2
        ),
        strengths=_linspace(0.04, 3),
        trials=2,
    ),
    "quick": NoiseFinetuneExperiment("quick", trials=8),
    "full": NoiseFinetuneExperiment("full", finetune=NoiseFinetuneConfig(epochs=20)),
}
"""Named budgets: ``smoke`` (tests), ``quick`` (2-core CPU), ``full``."""


def preset(name: str) -> NoiseFinetuneExperiment:
    """The named preset.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def _say(config: NoiseFinetuneExperiment, message: str) -> None:
    if config.progress:
        print(message, flush=True)


def _verify_summary(verify: dict) -> dict[str, Any]:
    keys = ("accuracy", "digital_accuracy", "max_abs_deviation", "min_decision_margin", "mzis")
    return {key: verify[key] for key in keys}


def _limits(before: dict, after: dict) -> dict[str, Any]:
    """First strengths below 100 % / 99 % and their positions in the sweep, before and after."""
    strengths = before["strengths"]

    def position(value: float | None) -> int:
        return len(strengths) if value is None else strengths.index(value)

    limits = {}
    for key in ("first_below_100", "first_below_99"):
        limits[key] = {"before": before[key], "after": after[key]}
        moved = position(after[key]) - position(before[key])
        limits[key]["sweep_steps_later_after"] = moved
    limits["crossing_99_interpolated"] = {
        "before": _crossing(before, 0.99),
        "after": _crossing(after, 0.99),
    }
    return limits


def _crossing(result: dict, level: float) -> float | None:
    """Strength at which the mean accuracy first falls to ``level``, linearly interpolated.

    An estimate between two sweep points (the mean accuracy is taken as linear between
    them); ``None`` if it never falls below ``level`` in the sweep or starts below it.
    """
    x, y = result["strengths"], result["accuracy_mean"]
    if y[0] < level:
        return None
    for i in range(1, len(x)):
        if y[i] < level:
            return x[i - 1] + (x[i] - x[i - 1]) * (y[i - 1] - level) / (y[i - 1] - y[i])
    return None


def _verdict(document: dict) -> str:
    finetune = document["finetune"]
    limits = document["limits"]
    unit = document["sweep_before"]["unit"]

    def shown(value: float | None) -> str:
        return "never (within the sweep)" if value is None else f"{value:.3g} {unit}"

    moved = limits["first_below_99"]["sweep_steps_later_after"]
    if moved > 0:
        outcome = "tolerates more noise after fine-tuning"
    elif moved < 0:
        outcome = "tolerates less noise after fine-tuning"
    else:
        outcome = "drops below 99 % at the same sweep strength before and after fine-tuning"
    return (
        f"Fine-tuned under {finetune['config']['noise_model']} noise at "
        f"{finetune['config']['strength']:g} {unit} (epoch {finetune['selected_epoch']} kept), "
        f"the circuit {outcome}: first below 99 % at "
        f"{shown(limits['first_below_99']['before'])} before, "
        f"{shown(limits['first_below_99']['after'])} after; first below 100 % at "
        f"{shown(limits['first_below_100']['before'])} before, "
        f"{shown(limits['first_below_100']['after'])} after; 99 % crossed (interpolated "
        f"between sweep points) at {shown(limits['crossing_99_interpolated']['before'])} "
        f"before, {shown(limits['crossing_99_interpolated']['after'])} after. Mean accuracy "
        f"at the training "
        f"strength: {100 * document['at_training_strength']['before']:.4f} % before, "
        f"{100 * document['at_training_strength']['after']:.4f} % after (sweep seed "
        f"{document['config']['sweep_seed']}); noise-free phase-level accuracy after: "
        f"{100 * document['verify_after']['accuracy']:.4f} %."
    )


def _markdown(document: dict) -> str:
    before, after = document["sweep_before"], document["sweep_after"]
    lines = [
        f"| {before['model']} strength ({before['unit']}) | before: mean accuracy | "
        "after: mean accuracy |",
        "|---|---|---|",
    ]
    for value, a, b in zip(
        before["strengths"], before["accuracy_mean"], after["accuracy_mean"], strict=True
    ):
        lines.append(f"| {value:g} | {100 * a:.4f} % | {100 * b:.4f} % |")
    return "\n".join([*lines, "", document["verdict"], ""])


def _figure(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    draw_robustness(
        left,
        [document["sweep_before"], document["sweep_after"]],
        labels=["deployed", "fine-tuned"],
        title=f"{document['scenario']}: {document['sweep_before']['description']}",
    )
    training = document["finetune"]["config"]["strength"]
    left.axvline(training, color="gray", ls=":", lw=0.8)
    history = document["finetune"]["history"]
    epochs = history["epoch"]
    right.plot(epochs, 100 * np.asarray(history["noisy_accuracy"]), "o-", ms=3, label="noisy")
    right.plot(epochs, 100 * np.asarray(history["ideal_accuracy"]), "s--", ms=3, label="ideal")
    right.axvline(document["finetune"]["selected_epoch"], color="gray", ls=":", lw=0.8)
    right.set(
        xlabel="fine-tuning epoch",
        ylabel="exhaustive accuracy (%)",
        title=f"at strength {training:g} (selection seed)",
    )
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: NoiseFinetuneExperiment, workdir: str | Path) -> dict[str, Any]:
    """Train (or reuse), deploy, sweep, fine-tune, sweep again; write the report.

    Args:
        config: budget and scope, e.g. ``preset("quick")``.
        workdir: output directory.

    Returns:
        The document written to ``workdir/noise_finetune.json``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = config.finetune.noise_model
    run_dir = workdir / "run" if config.run_dir is None else Path(config.run_dir)
    if not (run_dir / "result.json").is_file():
        train_config = TrainConfig(scenario=config.scenario, **dict(config.train_overrides))
        _say(config, f"training {run_dir}")
        train_onn(train_config, run_dir, resume=True, progress=config.progress)
    circuit, _ = deploy(run_dir)
    save_circuit(workdir / "circuit.npz", circuit)
    verify_before = verify_circuit(circuit)
    _say(config, f"deployed: phase-level {100 * verify_before['accuracy']:.4f} %")
    trials = config.trials if NOISE_MODELS[model].random else 1
    sweep = {"trials": trials, "key": config.sweep_seed}
    before = robustness_sweep(circuit, model, config.strengths, **sweep)
    _say(config, f"before: first below 99 % at {before['first_below_99']} {before['unit']}")
    tuned, history = finetune_circuit(circuit, config.finetune, progress=config.progress)
    path = save_circuit(workdir / "circuit_finetuned.npz", tuned)
    reloaded = load_circuit(path)
    verify_after = verify_circuit(reloaded)
    after = robustness_sweep(reloaded, model, config.strengths, **sweep)
    _say(config, f"after: first below 99 % at {after['first_below_99']} {after['unit']}")
    at_training = {}
    if config.finetune.strength in before["strengths"]:
        index = before["strengths"].index(config.finetune.strength)
        at_training = {
            "before": before["accuracy_mean"][index],
            "after": after["accuracy_mean"][index],
        }
    else:
        point = robustness_sweep(circuit, model, [config.finetune.strength], **sweep)
        tuned_point = robustness_sweep(reloaded, model, [config.finetune.strength], **sweep)
        at_training = {
            "before": point["accuracy_mean"][0],
            "after": tuned_point["accuracy_mean"][0],
        }
    scenario = config.scenario if isinstance(config.scenario, str) else config.scenario.name
    document = {
        "scenario": f"{circuit.info.bits}b{circuit.info.servers}s",
        "run_dir": str(run_dir),
        "config": {
            **dataclasses.asdict(config),
            "scenario": scenario,
            "finetune": config.finetune.to_json(),
        },
        "verify_before": _verify_summary(verify_before),
        "verify_after": _verify_summary(verify_after),
        "finetune": {
            "config": config.finetune.to_json(),
            "selected_epoch": history["selected_epoch"],
            "seconds": history["seconds"],
            "history": {key: history[key] for key in history if key != "config"},
        },
        "sweep_before": before,
        "sweep_after": after,
        "limits": _limits(before, after),
        "at_training_strength": at_training,
        "circuits": {"before": "circuit.npz", "after": "circuit_finetuned.npz"},
    }
    document["verdict"] = _verdict(document)
    document["seconds"] = time.perf_counter() - start
    write_json_atomically(workdir / "noise_finetune.json", document)
    (workdir / "noise_finetune.md").write_text(_markdown(document))
    _figure(document, workdir / "noise_finetune.png")
    _say(config, document["verdict"])
    return document


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (``python -m experiments.noise_finetune --help``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --config quick")
    parser.add_argument("--out", type=Path, default=Path("runs/noise_finetune"))
    parser.add_argument(
        "--run-dir", help="run directory: reused if trained, else trained there (default OUT/run)"
    )
    parser.add_argument("--model", choices=sorted(NOISE_MODELS), help="non-ideality")
    parser.add_argument("--strength", type=float, help="fine-tuning strength (model's unit)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs")
    parser.add_argument("--sweep", help="sweep strengths start:stop:count")
    parser.add_argument("--trials", type=int, help="Monte Carlo trials per sweep strength")
    parser.add_argument("--seed", type=int, help="seed of the sweeps")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = preset("quick" if args.quick else args.config)
    changes = {
        name: value
        for name, value in (
            ("noise_model", args.model),
            ("strength", args.strength),
            ("epochs", args.epochs),
        )
        if value is not None
    }
    try:
        if changes:
            config = config.replace(finetune=config.finetune.replace(**changes))
        if args.sweep:
            config = config.replace(strengths=parse_sweep(args.sweep))
    except ValueError as error:
        parser.error(str(error))
    if args.trials is not None:
        if args.trials < 1:
            parser.error(f"--trials must be >= 1, got {args.trials}")
        config = config.replace(trials=args.trials)
    if args.seed is not None:
        config = config.replace(sweep_seed=args.seed)
    if args.run_dir:
        config = config.replace(run_dir=args.run_dir)
    if args.no_progress:
        config = config.replace(progress=False)
    run(config, args.out)
    print((args.out / "noise_finetune.md").read_text())


if __name__ == "__main__":
    main()
