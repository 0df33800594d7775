"""Why training stalls short of 100 %: the dynamics of runs and the inputs that stay wrong.

Usage, from the repository root::

    python -m experiments.training_dynamics [--config smoke|quick] [--quick]
        [--out results/training_dynamics] [--run-dir LABEL=DIR ...] [--no-progress]

It trains the preset's runs (``quick``: the 8b4s network with the paper's uniform
sampling on the default 130-epoch schedule and on a 60-epoch one, and with focused
sampling on the 60-epoch one with seeds 0 and 1; about 3 minutes on 2 CPU cores), adds
any finished run directories given with ``--run-dir`` (for example the 8b8s preset's
run), and for each:

* reads the history the trainer records at every evaluation: accuracy, wrongly decided
  symbols per position (least significant first), inputs within 0.25 symbol of a
  threshold, the smallest decision margin; the epoch where loss stage 2 starts;
* reloads the final projected network and scores every input: which symbol positions are
  wrong, how the wrong inputs spread over the target value (is it the large sums?), and
  the error values ``t_hat - t``, and the wrong-input rate at each value of each ONN
  input (do the stragglers sit at the edges of the input cube?), and how many sit beside
  a step of ``t`` or at a wrap of the symbol they get wrong (a drop from 3 to 0).

Writes ``OUT/training_dynamics.json`` (strict JSON) and ``OUT/training_dynamics.png``
(wrong inputs, per-symbol wrong counts and smallest margin over the epochs; wrong-input
rate by target value and by the value of each input at the end). Runs trained here lie
in ``OUT/runs/<label>/`` and are resumed (reused when finished) on a second call.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from optinc_jax.learning.config import TrainConfig
from optinc_jax.learning.evaluate import predict_values
from optinc_jax.learning.focus import find_hard_samples, symbol_margins
from optinc_jax.learning.reporting import write_json_atomically
from optinc_jax.learning.trainer import RESULT_FILE, load_run, train_onn

__all__ = ["PRESETS", "DynamicsConfig", "analyze_run", "main", "run", "symbol_periods"]

TARGET_BINS = 8
"""The target range ``[0, 2^B)`` is split into this many equal bins for the wrong rates."""


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
    """What the experiment trains and analyzes.

    Attributes:
        preset: the preset's name.
        runs: ``(label, TrainConfig)`` pairs trained here (in ``OUT/runs/<label>``).
        run_dirs: ``(label, directory)`` pairs of finished runs to analyze as they are.
        margin: decision margin (symbol units) below which an input counts as hard.
        progress: show progress bars.
    """

    preset: str
    runs: tuple[tuple[str, TrainConfig], ...]
    run_dirs: tuple[tuple[str, str], ...] = ()
    margin: float = 0.25
    progress: bool = True

    def replace(self, **changes) -> "DynamicsConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_SHORT = {"epochs": 60, "switch_epoch": 35}

PRESETS: dict[str, DynamicsConfig] = {
    "smoke": DynamicsConfig(
        "smoke",
        (
            ("uniform", TrainConfig(epochs=2, steps_per_epoch=3)),
            ("focus", TrainConfig(epochs=2, steps_per_epoch=3, focus_fraction=0.25)),
        ),
        progress=False,
    ),
    "quick": DynamicsConfig(
        "quick",
        (
            ("8b4s uniform, 130 epochs (defaults)", TrainConfig()),
            ("8b4s uniform, 60 epochs", TrainConfig(**_SHORT)),
            ("8b4s focus 0.25, 60 epochs", TrainConfig(**_SHORT, focus_fraction=0.25)),
            (
                "8b4s focus 0.25, 60 epochs, seed 1",
                TrainConfig(**_SHORT, focus_fraction=0.25, seed=1),
            ),
        ),
    ),
}
"""Budgets by name (module docstring)."""


def symbol_periods(bits: int, servers: int) -> list[float]:
    """How many times each output symbol of ``floor(S / N)`` wraps around over the inputs.

    The ONN's inputs are the per-symbol sums ``s_j`` in ``[0, 3N]`` (``S = sum_j 4^j
    s_j``). Output symbol ``k`` is ``floor((S mod m) / (N 4^k))`` with ``m = 4^(k+1) N``:
    a sawtooth of the inputs ``j`` whose place value ``4^j`` is not a multiple of ``m``.
    Over the grid, their weighted sum spans ``3N sum_j 4^j``, i.e. this many periods of
    ``m``; a value below 1 is a staircase that never wraps. For one ONN input per symbol
    (``r = 1``).

    Args:
        bits: B (even).
        servers: N (a power of two).

    Returns:
        ``[K]`` periods, least significant symbol first.

    Examples:
        >>> symbol_periods(8, 4)
        [3.75, 3.9375, 3.984375, 0.99609375]
        >>> symbol_periods(8, 8)[:2]
        [15.75, 15.9375]
    """
    symbols = bits // 2
    periods = []
    for k in range(symbols):
        modulus = 4 ** (k + 1) * servers
        span = sum(4**j for j in range(symbols) if 4**j % modulus) * 3 * servers
        periods.append(span / modulus)
    return periods


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()


def analyze_run(label: str, run_dir: str | Path, *, margin: float = 0.25) -> dict[str, Any]:
    """The history of a finished run and the inputs its final network gets (nearly) wrong.

    Args:
        label: name of the run in the report.
        run_dir: a run directory written by :func:`~optinc_jax.learning.trainer.train_onn`.
        margin: decision margin below which an input counts as hard.

    Returns:
        A JSON-ready dict: ``label``, ``scenario``, ``approx``, ``config``,
        ``first_full_accuracy``, ``history`` (as recorded), ``switch_epoch`` and ``final``
        (``wrong``, ``hard``, ``wrong_by_symbol``, ``wrong_rate_by_target`` over
        :data:`TARGET_BINS` bins, ``error_values`` as ``{t_hat - t: count}``,
        ``wrong_by_input_value``: per ONN input, its grid values with the count of inputs
        and of wrong ones at each, and their ratio; ``beside_a_step`` and ``at_a_wrap``:
        how many wrong inputs sit next to a step of ``t`` or at a wrap of the symbol they
        get wrong, against the grid's share, and ``by_sum``: over which distinct sums ``S``
        they spread and how rare those are, see :func:`_wrong_beside_steps`).
    """
    run_dir = Path(run_dir)
    record = json.loads((run_dir / RESULT_FILE).read_text())
    loaded = load_run(run_dir)
    dataset = loaded.dataset
    hard, diagnostics = find_hard_samples(loaded.apply_fn, loaded.params, dataset, margin=margin)
    indices = jnp.asarray(hard.indices)[: diagnostics["hard_count"]]
    samples = dataset.samples(indices)
    y = loaded.apply_fn(loaded.params, samples.inputs)
    wrong_symbols = np.asarray(symbol_margins(y, samples.target_symbols) <= 0)
    wrong = wrong_symbols.any(axis=-1)
    target = np.asarray(samples.target)
    predicted = np.asarray(predict_values(loaded.apply_fn, loaded.params, samples.inputs))
    top = 2**dataset.bits
    everything = dataset.samples(jnp.arange(dataset.size, dtype=jnp.int32))
    all_inputs = np.asarray(everything.inputs)
    per_bin = np.histogram(np.asarray(everything.target), bins=TARGET_BINS, range=(0, top))[0]
    wrong_per_bin = np.histogram(target[wrong], bins=TARGET_BINS, range=(0, top))[0]
    errors = Counter(int(e) for e in (predicted - target)[wrong])
    wrong_indices = np.asarray(hard.indices)[: diagnostics["hard_count"]][wrong]
    return {
        "label": label,
        "run_dir": str(run_dir),
        "scenario": loaded.scenario.name,
        "approx": list(loaded.approx_layers),
        "size": dataset.size,
        "config": record["config"],
        "epochs": record["epochs"],
        "accuracy": record["accuracy"],
        "train_seconds": record["train_seconds"],
        "first_full_accuracy": record.get("first_full_accuracy"),
        "switch_epoch": record["history"]["switch_epoch"],
        "symbol_periods": symbol_periods(loaded.scenario.bits, loaded.scenario.servers),
        "history": record["history"],
        "final": {
            "wrong": int(wrong.sum()),
            "hard": diagnostics["hard_count"],
            "min_margin": diagnostics["min_margin"],
            "wrong_by_symbol": [int(c) for c in wrong_symbols.sum(axis=0)],
            "target_bin_edges": [int(top * i / TARGET_BINS) for i in range(TARGET_BINS + 1)],
            "wrong_rate_by_target": [
                float(w / n) if n else 0.0 for w, n in zip(wrong_per_bin, per_bin, strict=True)
            ],
            "error_values": {str(k): v for k, v in sorted(errors.items())},
            "wrong_by_input_value": [
                _wrong_by_value(all_inputs[:, column], wrong_indices)
                for column in range(all_inputs.shape[1])
            ],
            **_wrong_beside_steps(
                all_inputs,
                np.asarray(everything.target),
                wrong_indices,
                wrong_symbols[wrong],
                servers=loaded.scenario.servers,
                symbols_per_input=dataset.bits // 2 // all_inputs.shape[1],
            ),
        },
    }


def _wrong_beside_steps(
    inputs: np.ndarray,
    target: np.ndarray,
    wrong_indices: np.ndarray,
    wrong_symbols: np.ndarray,
    *,
    servers: int,
    symbols_per_input: int,
) -> dict[str, Any]:
    """Where the wrong inputs sit on the staircase ``t = floor(S / N)``.

    The target depends on the input only through the integer sum
    ``S = N sum_m (4^r)^m x_m`` (SPEC section 2). An input is *beside a step* when ``t``
    changes between it and a neighbouring sum (``S mod N`` is ``N - 1`` or ``0``), and at a
    *wrap* of symbol ``k`` when its target is the last or the first value of that symbol's
    cycle (``t mod 4^(k+1)`` is ``4^(k+1) - 1`` or ``0``), where the symbol drops from 3
    to 0 between neighbouring targets.

    Args:
        inputs: every input of the grid ``[S, I]``.
        target: their targets ``[S]``.
        wrong_indices: grid indices of the wrong inputs ``[W]``.
        wrong_symbols: ``[W, K]`` which symbols of each wrong input are wrong.
        servers: N.
        symbols_per_input: r.

    Returns:
        ``by_sum``: how the wrong inputs spread over the distinct sums ``S`` (``distinct``,
        ``with_errors``, ``all_wrong``: sums every input of which is wrong) and how rare
        their sums and targets are (medians of the inputs per sum and per target, over the
        grid and over those with errors; ``None`` without errors);
        ``beside_a_step``: ``wrong`` (count), ``wrong_share`` and ``grid_share``;
        ``at_a_wrap``: per symbol (least significant first), ``wrong`` (inputs with that
        symbol wrong), ``at_wrap`` (how many of them sit at its wrap) and ``grid_share``.
    """
    place = (4.0**symbols_per_input) ** np.arange(inputs.shape[1])
    total = np.rint(servers * inputs.astype(np.float64) @ place).astype(np.int64)
    beside = np.isin(total % servers, (servers - 1, 0))
    at_a_wrap = []
    for k in range(wrong_symbols.shape[1]):
        cycle = 4 ** (k + 1)
        wrap = np.isin(target % cycle, (cycle - 1, 0))
        symbol_wrong = wrong_indices[wrong_symbols[:, k]]
        at_a_wrap.append(
            {
                "wrong": int(symbol_wrong.size),
                "at_wrap": int(wrap[symbol_wrong].sum()),
                "grid_share": float(wrap.mean()),
            }
        )
    wrong_beside = int(beside[wrong_indices].sum())
    sums, sum_of_input, per_sum = np.unique(total, return_inverse=True, return_counts=True)
    wrong_per_sum = np.bincount(sum_of_input[wrong_indices], minlength=len(sums))
    with_errors = wrong_per_sum > 0
    _, target_of_input, per_target = np.unique(target, return_inverse=True, return_counts=True)
    wrong_targets = np.unique(target_of_input[wrong_indices])
    return {
        "by_sum": {
            "distinct": len(sums),
            "with_errors": int(with_errors.sum()),
            "all_wrong": int((with_errors & (wrong_per_sum == per_sum)).sum()),
            "median_inputs_per_sum": float(np.median(per_sum)),
            "median_inputs_per_sum_with_errors": _median_or_none(per_sum[with_errors]),
            "median_inputs_per_target": float(np.median(per_target)),
            "median_inputs_per_target_with_errors": _median_or_none(per_target[wrong_targets]),
        },
        "beside_a_step": {
            "wrong": wrong_beside,
            "wrong_share": wrong_beside / wrong_indices.size if wrong_indices.size else 0.0,
            "grid_share": float(beside.mean()),
        },
        "at_a_wrap": at_a_wrap,
    }


def _median_or_none(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _wrong_by_value(column: np.ndarray, wrong_indices: np.ndarray) -> dict[str, list]:
    """Wrong inputs per value of one ONN input: ``values``, ``count``, ``wrong``, ``rate``."""
    values, inverse = np.unique(column, return_inverse=True)
    count = np.bincount(inverse, minlength=len(values))
    wrong = np.bincount(inverse[wrong_indices], minlength=len(values))
    return {
        "values": [float(v) for v in values],
        "count": [int(c) for c in count],
        "wrong": [int(w) for w in wrong],
        "rate": [float(w / c) for w, c in zip(wrong, count, strict=True)],
    }


def run(config: DynamicsConfig, workdir: str | Path) -> list[dict[str, Any]]:
    """Trains the preset's runs, analyzes them and the given ones, writes JSON and figure.

    Args:
        config: the budget (:data:`PRESETS`).
        workdir: output directory.

    Returns:
        One :func:`analyze_run` dict per run, in order.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    targets = []
    for label, train_config in config.runs:
        run_dir = workdir / "runs" / _slug(label)
        train_onn(train_config, run_dir, resume=True, progress=config.progress)
        targets.append((label, run_dir))
    targets.extend((label, Path(directory)) for label, directory in config.run_dirs)
    analyses = [analyze_run(label, path, margin=config.margin) for label, path in targets]
    write_json_atomically(
        workdir / "training_dynamics.json", {"preset": config.preset, "runs": analyses}
    )
    _plot(analyses, workdir / "training_dynamics.png")
    return analyses


def _plot(analyses: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(19, 9))
    wrong_ax, symbol_ax, margin_ax, target_ax, input_ax, spare_ax = axes.ravel()
    spare_ax.axis("off")
    for index, analysis in enumerate(analyses):
        color = f"C{index}"
        history = analysis["history"]
        epochs = np.asarray(history["eval_epoch"])
        wrong = (1 - np.asarray(history["accuracy"])) * analysis["size"]
        wrong_ax.semilogy(epochs, np.maximum(wrong, 0.5), color=color, label=analysis["label"])
        wrong_ax.axvline(analysis["switch_epoch"], color=color, ls=":", lw=1)
        if "symbol_errors" in history:
            symbols = np.asarray(history["symbol_errors"])
            # runs of earlier versions scored every evaluation and did not list them
            scored = np.asarray(history.get("scored_epoch", epochs[: len(symbols)]))
            for k in range(symbols.shape[1]):
                symbol_ax.semilogy(
                    scored,
                    np.maximum(symbols[:, k], 0.5),
                    color=color,
                    ls=("-", "--", "-.", ":")[k % 4],
                    label=f"{analysis['label']}: symbol {k}" if index == 0 or k == 0 else None,
                )
            margin_ax.plot(scored, history["min_margin"], color=color, label=analysis["label"])
        edges = analysis["final"]["target_bin_edges"]
        centers = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
        width = (edges[1] - edges[0]) / (len(analyses) + 1)
        target_ax.bar(
            centers + (index - len(analyses) / 2) * width,
            analysis["final"]["wrong_rate_by_target"],
            width=width,
            color=color,
            label=f"{analysis['label']} ({analysis['final']['wrong']} wrong)",
        )
        if analysis["final"]["wrong"]:
            for column, spread in enumerate(analysis["final"]["wrong_by_input_value"]):
                values = np.asarray(spread["values"])
                # each input's grid drawn over [0, 1] so that every input shares the axis
                position = (values - values[0]) / max(values[-1] - values[0], 1e-12)
                input_ax.plot(
                    position,
                    spread["rate"],
                    color=color,
                    ls=("-", "--", "-.", ":")[column % 4],
                    marker=".",
                    label=f"{analysis['label']}: input {column}" if column == 0 else None,
                )
    wrong_ax.set(xlabel="epoch", ylabel="wrong inputs (0 drawn at 0.5)", title="Wrong inputs")
    wrong_ax.legend(fontsize=7)
    symbol_ax.set(
        xlabel="epoch",
        ylabel="wrongly decided symbols",
        title="Wrong symbols by position (0 = least significant)",
    )
    symbol_ax.legend(fontsize=6, ncol=2)
    margin_ax.axhline(0, color="k", lw=0.8)
    margin_ax.set(
        xlabel="epoch", ylabel="symbol units", title="Smallest decision margin (< 0: wrong)"
    )
    margin_ax.legend(fontsize=7)
    target_ax.set(
        xlabel="target value t",
        ylabel="share of inputs wrong",
        title="Final network: wrong inputs by target value",
    )
    target_ax.legend(fontsize=7)
    input_ax.set(
        xlabel="input value, scaled to [0, 1] (lines: inputs 0-3 as - -- -. :)",
        ylabel="share of inputs wrong",
        title="Final network: wrong inputs by the value of each input",
    )
    input_ax.legend(fontsize=7)
    fig.suptitle("Training dynamics (dotted: start of loss stage 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m experiments.training_dynamics --quick``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--quick", action="store_true", help="same as --config quick")
    parser.add_argument("--out", default="results/training_dynamics")
    parser.add_argument(
        "--run-dir", action="append", default=[], metavar="LABEL=DIR", help="a finished run"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = PRESETS["quick" if args.quick else args.config]
    run_dirs = []
    for item in args.run_dir:
        label, separator, directory = item.partition("=")
        if not separator or not label or not directory:
            parser.error(f"--run-dir takes LABEL=DIR, got {item!r}")
        if not (Path(directory) / RESULT_FILE).is_file():
            parser.error(f"--run-dir {directory}: no {RESULT_FILE} (not a finished run)")
        run_dirs.append((label, directory))
    config = config.replace(run_dirs=tuple(run_dirs), progress=not args.no_progress)
    for analysis in run(config, args.out):
        first = analysis["first_full_accuracy"]
        print(
            f"{analysis['label']}: {100 * analysis['accuracy']:.4f} % after "
            f"{analysis['epochs']} epochs; first 100 % "
            + (f"at epoch {first['epoch']} ({first['train_seconds']:.1f} s)" if first else "never")
            + f"; wrong by symbol {analysis['final']['wrong_by_symbol']}"
        )


if __name__ == "__main__":
    main()
