"""The ``optinc`` command line.

Every command prints text for people, or with ``--json`` exactly one JSON document on
stdout and nothing else. Every failure is one ``Error:`` line on stderr and no traceback:
bad arguments exit with status 2, failures of the run itself (a corrupt checkpoint, a busy
or unwritable run directory, a full disk, a diverged training) with status 1. Commands
import JAX only when they need it, so ``optinc --help`` stays fast.
"""

import os

# Before NumPy or JAX is imported anywhere: one BLAS thread per process unless told otherwise.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from optinc_jax import paper as paper_numbers
from optinc_jax.photonics import area as area_model  # pure Python, no JAX

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of text."
)
"""The ``--json`` flag shared by every command; pass its value to :func:`emit`."""

NOISE_MODEL_NAMES = ("phase", "dac", "loss", "splitter", "crosstalk", "receiver")
"""The non-idealities of :data:`optinc_jax.photonics.nonideal.NOISE_MODELS` (kept here so
that ``optinc --help`` does not import JAX; a test checks they agree)."""

noise_model_option = click.option(
    "--model",
    "noise_model",
    type=click.Choice(NOISE_MODEL_NAMES),
    default="phase",
    show_default=True,
    help="Non-ideality (units: rad, bits, dB per MZI, rad, coupling fraction, symbols).",
)
"""The ``--model`` option of ``optinc robustness`` and ``optinc finetune``."""


def emit(result: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    """Print a command's result as one JSON document or as text.

    Args:
        result: JSON-serializable result (dicts, lists, numbers, strings, bools).
        as_json: Print ``json.dumps(result)`` if true, else ``human(result)``.
        human: Formats ``result`` for people.
    """
    click.echo(json.dumps(result, allow_nan=False) if as_json else human(result))


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message (library errors can span many)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a command's exceptions into one-line click errors.

    ``ValueError`` is a usage error (exit 2) unless it is a checkpoint's; a checkpoint
    error, an ``OSError`` (unwritable directory, full disk) or a ``RuntimeError`` (a busy
    run directory, a diverged training, an XLA failure) is a failure of the run (exit 1).
    """
    failure: click.ClickException | None = None
    orphaned_writes = False
    try:
        yield
    except click.ClickException:
        raise
    except ValueError as error:
        from optinc_jax.learning.checkpoint import CheckpointError

        failure = (
            click.ClickException(_first_line(error))
            if isinstance(error, CheckpointError)
            else _UsageFailure(_first_line(error))
        )
    except (OSError, RuntimeError) as error:
        from optinc_jax.learning.checkpoint import CheckpointWriteError

        failure = click.ClickException(_first_line(error))
        orphaned_writes = isinstance(error, CheckpointWriteError)
    if failure is None:
        return
    if orphaned_writes:
        # The futures of orbax's failed write finish later on its threads and print "Event
        # loop is closed" tracebacks until the process exits: print the one line, then
        # send the rest of this dying process's stderr nowhere.
        failure.show()
        sys.stderr = io.StringIO()
        raise SystemExit(failure.exit_code)
    raise failure


class _UsageFailure(click.ClickException):
    """A bad value given to a command: one line, exit status 2 (as click's usage errors)."""

    exit_code = 2


class _OneLineGroup(click.Group):
    """A command group whose usage errors are one line (no usage block), status 2."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            raise _usage_line(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:
            raise _usage_line(error) from None


def _usage_line(error: click.UsageError) -> click.ClickException:
    """One line for a usage error, pointing at the command's help."""
    command = error.ctx.command_path if error.ctx is not None else "optinc"
    return _UsageFailure(f"{error.format_message()} (see '{command} --help')")


@click.group(cls=_OneLineGroup)
@click.version_option(package_name="optinc-jax")
def main() -> None:
    """OptINC: optical in-network computing of quantized gradient averages."""


def _layers_option(ctx: click.Context, param: click.Parameter, value: str | None):
    """Click callback: parse ``--layers`` or fail with a one-line message."""
    del ctx, param
    if value is None:
        return None
    try:
        return area_model.parse_layers(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _area_dict(report: area_model.AreaReport) -> dict[str, Any]:
    """JSON-ready view of an area report; ``area_ratio`` is a fraction."""
    return {
        "layers": list(report.layers),
        "approx": list(report.approx),
        "mzis": report.mzis,
        "mzis_full": report.mzis_full,
        "area_ratio": report.area_ratio,
        "matrices": [matrix._asdict() for matrix in report.matrices],
    }


def _paper_dict(row: paper_numbers.AreaRow) -> dict[str, Any]:
    """Our area figure for one of the paper's rows, beside the paper's."""
    report = area_model.onn_area(row.layers, row.approx)
    return {
        "table": row.table,
        "bits": row.bits,
        "servers": row.servers,
        "layers": list(row.layers),
        "approx": list(row.approx),
        "mzis": report.mzis,
        "mzis_full": report.mzis_full,
        "area_ratio": report.area_ratio,
        "paper_area_ratio": row.area_ratio_percent / 100,
        "difference_pp": 100 * report.area_ratio - row.area_ratio_percent,
    }


def _format_area(result: dict[str, Any]) -> str:
    """Per-matrix MZI table and totals."""
    layers = "-".join(map(str, result["layers"]))
    lines = [
        f"ONN {layers}, approximated matrices: {area_model.format_approx(result['approx'])}",
        f"{'matrix':>6}  {'rows x cols':>11}  {'approx':>6}  {'MZIs full':>10}  {'MZIs':>10}",
    ]
    for matrix in result["matrices"]:
        shape = f"{matrix['rows']} x {matrix['cols']}"
        approx = "yes" if matrix["approximated"] else "no"
        lines.append(
            f"{matrix['index']:>6}  {shape:>11}  {approx:>6}  "
            f"{matrix['mzis_full']:>10,}  {matrix['mzis']:>10,}"
        )
    lines.append(
        f"{'total':>6}  {'':>11}  {'':>6}  {result['mzis_full']:>10,}  {result['mzis']:>10,}"
    )
    lines.append(
        f"area ratio: {100 * result['area_ratio']:.2f} % "
        f"({result['mzis']:,} of {result['mzis_full']:,} MZIs)"
    )
    return "\n".join(lines)


def _format_paper(rows: list[dict[str, Any]]) -> str:
    """Our area ratios beside the paper's Tables I and II."""
    structure_width = max(len("-".join(map(str, row["layers"]))) for row in rows)
    lines = [
        f"{'table':<5}  {'bits':>4}  {'servers':>7}  {'ONN structure':<{structure_width}}  "
        f"{'approx':<7}  {'ours':>7}  {'paper':>7}  {'diff (pp)':>9}"
    ]
    for row in rows:
        structure = "-".join(map(str, row["layers"]))
        lines.append(
            f"{row['table']:<5}  {row['bits']:>4}  {row['servers']:>7}  "
            f"{structure:<{structure_width}}  {area_model.format_approx(row['approx']):<7}  "
            f"{100 * row['area_ratio']:>6.2f}%  {100 * row['paper_area_ratio']:>6.1f}%  "
            f"{row['difference_pp']:>+9.2f}"
        )
    return "\n".join(lines)


@main.command("area")
@click.option(
    "--layers",
    callback=_layers_option,
    metavar="W0-W1-...",
    help="ONN layer widths, e.g. 4-64-128-256-128-64-4.",
)
@click.option(
    "--approx",
    "approx_spec",
    metavar="SPEC",
    help="Approximated weight matrices (1-based): none, all, 3, 1-6, 2,4,6 or 2-4,6. "
    "[default: none]",
)
@click.option(
    "--paper",
    is_flag=True,
    help="Compare every area figure of the paper's Tables I and II with ours.",
)
@json_option
def area_command(
    layers: tuple[int, ...] | None, approx_spec: str | None, paper: bool, as_json: bool
) -> None:
    """Count the MZIs of an ONN with and without the diagonal x unitary approximation."""
    if paper:
        if layers is not None or approx_spec is not None:
            raise click.UsageError("--paper uses the paper's structures; drop --layers/--approx")
        emit([_paper_dict(row) for row in paper_numbers.area_rows()], as_json, _format_paper)
        return
    if layers is None:
        raise click.UsageError("give --layers (and optionally --approx), or --paper")
    try:
        report = area_model.onn_area(layers, approx_spec or "none")
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--approx'") from None
    emit(_area_dict(report), as_json, _format_area)


def _format_training(record: dict[str, Any]) -> str:
    """One paragraph about a finished run."""
    approx = area_model.format_approx(record["approx"])
    errors = record["error_histogram"] or "none"
    return "\n".join(
        [
            f"scenario {record['scenario']}: {record['bits']}-bit, {record['servers']} servers, "
            f"ONN {record['layers']}, approximated matrices {approx}",
            f"exhaustive accuracy of the projected ONN: {100 * record['accuracy']:.5f} % "
            f"({record['correct']:,} of {record['total']:,})",
            f"error histogram (t_hat - t: count): {errors}",
            f"area ratio: {100 * record['area_ratio']:.2f} % "
            f"({record['mzis']:,} of {record['mzis_full']:,} MZIs)",
            f"epochs: {record['epochs']}, training time: {record['train_seconds']:.1f} s",
            *_format_first_full(record),
            *_format_finetune_entry(record.get("noise_finetune")),
        ]
    )


def _format_first_full(record: dict[str, Any]) -> list[str]:
    """The line about a run's first projected 100 % (none for records that predate it)."""
    if "first_full_accuracy" not in record:
        return []
    first = record["first_full_accuracy"]
    if first is None:
        return ["projected 100 % not reached"]
    return [
        f"first projected 100 %: epoch {first['epoch']}, after {first['train_seconds']:.1f} s "
        "of training"
    ]


def _format_finetune_entry(entry: dict[str, Any] | None) -> list[str]:
    """The lines about a run's noise-aware fine-tuning (none without one)."""
    if entry is None:
        return []
    if entry["status"] != "finished":
        return [f"noise-aware fine-tuning skipped: {entry['reason']}"]
    config = entry["config"]
    return [
        f"noise-aware fine-tuning ({config['noise_model']} at {config['strength']}): mean "
        f"noisy accuracy {100 * entry['noisy_accuracy_before']:.4f} % -> "
        f"{100 * entry['noisy_accuracy_after']:.4f} %, noise-free "
        f"{100 * entry['ideal_accuracy_after']:.5f} %, circuit {entry['circuit']}"
    ]


@main.command("train")
@click.option("--scenario", default="8b4s", show_default=True, help="Registered scenario.")
@click.option(
    "--approx",
    "approx_spec",
    metavar="SPEC",
    help="Approximated matrices: none, all or a list such as 4-6 [default: the scenario's].",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="runs/train",
    show_default=True,
    help="Run directory (checkpoints, result.json, training.png).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per optimizer step.")
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(min=1),
    help="Optimizer steps per epoch [default: one pass over the dataset].",
)
@click.option("--seed", type=int, help="Initialization and sampling seed.")
@click.option("--stage2", type=click.Choice(["hybrid", "literal", "ste"]), help="Stage-2 loss.")
@click.option(
    "--focus",
    "focus_fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of each minibatch drawn from the wrong and low-margin inputs (0: uniform, "
    "the paper's) [default: the scenario's preset].",
)
@click.option(
    "--balance",
    "balance_fraction",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of each minibatch drawn with every target equally likely (0: uniform, the "
    "paper's) [default: the scenario's preset].",
)
@click.option("--learning-rate", type=float, help="Peak Adam learning rate.")
@click.option(
    "--switch-epoch", type=click.IntRange(min=0), help="First epoch of loss stage 2 (E1)."
)
@click.option(
    "--warmup",
    "warmup_fraction",
    type=float,
    help="Share of all steps spent warming the learning rate up, in [0, 1).",
)
@click.option(
    "--symbol-tolerance",
    type=float,
    help="Dead zone of the per-symbol loss, in symbol units, in [0, 0.5) (0: the paper's "
    "plain MSE).",
)
@click.option(
    "--stage2-tolerance",
    type=float,
    help="Dead zone of the per-symbol loss in stage 2 alone, in [0, 0.5) [default: the "
    "preset's, else --symbol-tolerance].",
)
@click.option(
    "--stop-margin",
    type=float,
    help="Stop only at a projected 100 % whose smallest decision margin is at least this, "
    "in symbol units, in [0, 0.5] (0: at the first 100 %; not in the paper) [default: the "
    "preset's, else 0].",
)
@click.option(
    "--approx-side",
    type=click.Choice(["left", "right"]),
    help="Approximated blocks as diag(d) U ('left', the paper's) or U diag(d) ('right', "
    "the diagonal on the input side; the same MZIs) [default: the preset's, else left].",
)
@click.option(
    "--condition-until",
    type=click.IntRange(min=0),
    help="Project the matrices the scenario approximates through this epoch even when "
    "--approx keeps them full, then train them freely (0: never, the paper's) "
    "[default: the preset's, else 0].",
)
@click.option(
    "--revive-until",
    type=click.IntRange(min=0),
    help="Re-initialize the hidden units dead on a draw of the grid after every epoch "
    "through this one (ReDo; 0: never, the paper's) [default: the preset's, else 0].",
)
@click.option(
    "--leak-start",
    type=float,
    help="Train with a leaky activation of this negative slope, in [0, 1), falling "
    "linearly to the ReLU at --leak-until (0: the paper's ReLU throughout; every "
    "evaluation uses the ReLU) [default: the preset's, else 0].",
)
@click.option(
    "--leak-until",
    type=click.IntRange(min=0),
    help="The epoch at which the leak reaches 0 [default: the preset's, else 0].",
)
@click.option(
    "--bias-learning-rate-scale",
    type=float,
    help="The biases' learning rate as a multiple of the kernels', > 0 (1: the paper's "
    "single learning rate) [default: the preset's, else 1].",
)
@click.option(
    "--adam-eps",
    type=float,
    help="Adam's epsilon, > 0 (optax's 1e-8 unless a preset sets it) "
    "[default: the preset's, else 1e-8].",
)
@click.option(
    "--stage2-learning-rate-scale",
    type=float,
    help="Multiply the learning rate by this in loss stage 2, > 0 (1: one schedule, the "
    "paper's) [default: the preset's, else 1].",
)
@click.option(
    "--stage1-eval-every",
    type=click.IntRange(min=1),
    help="Evaluate every this many epochs while loss stage 1 trains (and after its last "
    "epoch); 1: every epoch [default: the preset's, else every epoch].",
)
@click.option(
    "--pad-levels",
    type=click.IntRange(min=0),
    help="Train on the grid padded with this many virtual levels of the most significant "
    "input on each side; the accuracy is the real grid's (not in the paper) "
    "[default: the preset's, else 0].",
)
@click.option(
    "--pad-continued-values",
    type=click.IntRange(min=0),
    help="With --pad-levels: the least significant target symbol continues its sawtooth "
    "for this many target values beyond each end, then holds the end's value (0: held "
    "throughout; not in the paper) [default: the preset's, else continued throughout].",
)
@click.option(
    "--refit-iterations",
    type=click.IntRange(min=0),
    help="After the last epoch, re-solve the last weight matrix over the whole grid for "
    "the receiver (this many Newton iterations; 0: never, the paper's). Needs a free last "
    "matrix.",
)
@click.option(
    "--refit-tolerance",
    type=float,
    help="Dead zone of the refit's hinge, in symbol units, in (0, 0.5) [default: 0.35].",
)
@click.option(
    "--finish-rounds",
    type=click.IntRange(min=0),
    help="After the last epoch (before the refit), this many rounds of the hinge "
    "finishing: every matrix trained on the exact gradient of the receiver hinge over the "
    "whole grid (0: never, the paper's).",
)
@click.option(
    "--finish-learning-rate",
    type=float,
    help="The finishing's constant Adam step [default: 1e-4].",
)
@click.option(
    "--finish-balance/--no-finish-balance",
    default=None,
    help="Weigh every target equally in the finishing's hinge (the plain sum over the "
    "inputs without it) [default: the preset's, else off].",
)
@click.option(
    "--finish-backtrack",
    type=float,
    help="In [0, 1): a finishing round whose steps raised the whole-grid hinge is undone "
    "and the next steps start again from where it started, the Adam step times this factor "
    "(0: never, a constant step) [default: the preset's, else 0].",
)
@click.option(
    "--restore-best/--no-restore-best",
    default=None,
    help="After the last epoch, continue (finishing, refit, result) from the scored epoch "
    "with the fewest wrong inputs when the last one has more (the paper keeps the last) "
    "[default: the preset's, else off].",
)
@click.option(
    "--noise-model",
    type=click.Choice(NOISE_MODEL_NAMES),
    help="After training, fine-tune the deployed circuit under this non-ideality.",
)
@click.option("--noise-strength", type=float, help="Its strength (rad, bits, dB, ...).")
@click.option("--noise-epochs", type=click.IntRange(min=1), help="Fine-tuning epochs.")
@click.option("--noise-lr", type=float, help="Fine-tuning peak learning rate.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def train_command(
    scenario: str,
    approx_spec: str | None,
    out_dir: str,
    epochs: int | None,
    batch_size: int | None,
    steps_per_epoch: int | None,
    seed: int | None,
    stage2: str | None,
    focus_fraction: float | None,
    balance_fraction: float | None,
    learning_rate: float | None,
    switch_epoch: int | None,
    warmup_fraction: float | None,
    symbol_tolerance: float | None,
    stage2_tolerance: float | None,
    stop_margin: float | None,
    approx_side: str | None,
    condition_until: int | None,
    revive_until: int | None,
    leak_start: float | None,
    leak_until: int | None,
    bias_learning_rate_scale: float | None,
    adam_eps: float | None,
    stage2_learning_rate_scale: float | None,
    stage1_eval_every: int | None,
    pad_levels: int | None,
    pad_continued_values: int | None,
    refit_iterations: int | None,
    refit_tolerance: float | None,
    finish_rounds: int | None,
    finish_learning_rate: float | None,
    finish_balance: bool | None,
    finish_backtrack: float | None,
    restore_best: bool | None,
    noise_model: str | None,
    noise_strength: float | None,
    noise_epochs: int | None,
    noise_lr: float | None,
    resume: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train an OptINC ONN with hardware-aware projection and evaluate it exhaustively.

    Unset options take the scenario's training preset (optinc_jax.TRAINING_PRESETS).

    With --noise-model the trained network is then deployed to MZI phases and fine-tuned
    under that noise (RUN_DIR/circuit_finetuned.npz; not in the paper).
    """
    from optinc_jax.learning.config import TrainConfig
    from optinc_jax.learning.trainer import train_onn

    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "seed": seed,
        "stage2": stage2,
        "focus_fraction": focus_fraction,
        "balance_fraction": balance_fraction,
        "learning_rate": learning_rate,
        "switch_epoch": switch_epoch,
        "warmup_fraction": warmup_fraction,
        "symbol_tolerance": symbol_tolerance,
        "stage2_tolerance": stage2_tolerance,
        "stop_margin": stop_margin,
        "approx_side": approx_side,
        "condition_until": condition_until,
        "revive_until": revive_until,
        "leak_start": leak_start,
        "leak_until": leak_until,
        "bias_learning_rate_scale": bias_learning_rate_scale,
        "adam_eps": adam_eps,
        "stage2_learning_rate_scale": stage2_learning_rate_scale,
        "stage1_eval_every": stage1_eval_every,
        "pad_levels": pad_levels,
        "pad_continued_values": pad_continued_values,
        "refit_iterations": refit_iterations,
        "refit_tolerance": refit_tolerance,
        "finish_rounds": finish_rounds,
        "finish_learning_rate": finish_learning_rate,
        "finish_balance": finish_balance,
        "finish_backtrack": finish_backtrack,
        "restore_best": restore_best,
        "noise_model": noise_model,
        "noise_strength": noise_strength,
        "noise_epochs": noise_epochs,
        "noise_learning_rate": noise_lr,
    }
    if noise_model is not None and noise_strength is None:
        raise _UsageFailure(f"--noise-model {noise_model} needs --noise-strength")
    if noise_model is not None and noise_epochs is None:
        from optinc_jax.learning.finetune import NoiseFinetuneConfig

        overrides["noise_epochs"] = NoiseFinetuneConfig().epochs
    with one_line_errors():
        config = TrainConfig.for_scenario(scenario, approx=approx_spec, **overrides)
        result = train_onn(config, out_dir, resume=resume, progress=not quiet)
    record = {key: value for key, value in result.record.items() if key != "history"}
    record["run_dir"] = out_dir
    emit(record, as_json, _format_training)


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--chunk-size", type=click.IntRange(min=1), help="Samples per chunk [default: backend's]."
)
@json_option
def evaluate_command(run_dir: str, chunk_size: int | None, as_json: bool) -> None:
    """Reload RUN_DIR's checkpoint, project it and measure its exhaustive accuracy again."""
    from optinc_jax.learning.evaluate import evaluate_exhaustive
    from optinc_jax.learning.reporting import evaluation_record
    from optinc_jax.learning.trainer import load_run

    with one_line_errors():
        loaded = load_run(run_dir)
        evaluation = evaluate_exhaustive(
            loaded.apply_fn, loaded.params, loaded.dataset, chunk_size=chunk_size
        )
    record = {
        "run_dir": run_dir,
        "epochs": loaded.epoch,
        **evaluation_record(loaded.scenario, loaded.approx_layers, evaluation),
    }

    def human(result: dict[str, Any]) -> str:
        return (
            f"{result['scenario']} after {result['epochs']} epochs: exhaustive accuracy "
            f"{100 * result['accuracy']:.5f} % ({result['correct']:,} of {result['total']:,}), "
            f"errors {result['error_histogram'] or 'none'}, area ratio "
            f"{100 * result['area_ratio']:.2f} %"
        )

    emit(record, as_json, human)


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), required=True, help="Output .npz."
)
@json_option
def export_command(run_dir: str, out_path: str, as_json: bool) -> None:
    """Write RUN_DIR's projected ONN as plain arrays (weights_i [out, in], biases_i, scalars)."""
    from optinc_jax.learning.export import export_arrays, save_exported
    from optinc_jax.learning.trainer import load_run

    with one_line_errors():
        loaded = load_run(run_dir)
        arrays = export_arrays(
            loaded.model,
            loaded.params,
            bits=loaded.scenario.bits,
            servers=loaded.scenario.servers,
            approx_layers=loaded.approx_layers,
        )
        path = save_exported(out_path, arrays)
    result = {
        "path": str(path),
        "arrays": {name: list(array.shape) for name, array in sorted(arrays.items())},
    }
    emit(result, as_json, lambda r: f"wrote {r['path']} ({len(r['arrays'])} arrays)")


plot_option = click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Also draw the figure into this PNG.",
)
"""The ``--plot FILE`` option of the commands that draw a figure."""


def _require_parent(path: str | None) -> None:
    """Refuse a ``--plot`` path whose directory does not exist, before any work."""
    if path is not None:
        from pathlib import Path

        parent = Path(path).absolute().parent
        if not parent.is_dir():
            raise _UsageFailure(f"cannot write {path}: the directory {parent} does not exist")


def _format_volume(rows: list[dict[str, Any]]) -> str:
    """Fig. 6 as a table."""
    lines = [
        f"{'servers':>7}  {'ring':>6}  {'OptINC':>6}  {'+ exponents':>11}  "
        "(data sent per server / gradient size, from the byte counters)"
    ]
    for row in rows:
        lines.append(
            f"{row['servers']:>7}  {row['ring']:>6.3f}  {row['optinc']:>6.3f}  "
            f"{row['optinc_exponent_overhead']:>11.4f}"
        )
    return "\n".join(lines)


@main.command("comm")
@click.option(
    "--servers",
    "servers",
    type=click.IntRange(min=1),
    multiple=True,
    help="Server counts, e.g. --servers 4 8 16 [default: 4 8 16].",
)
@click.argument("more_servers", nargs=-1, type=click.IntRange(min=1))
@click.option("--bits", type=click.IntRange(min=2), default=8, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=1 << 16,
    show_default=True,
    help="Gradient elements per server in the measurement.",
)
@plot_option
@json_option
def comm_command(
    servers: tuple[int, ...],
    more_servers: tuple[int, ...],
    bits: int,
    size: int,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """Fig. 6: data each server sends per gradient average, ring all-reduce vs OptINC.

    The figures come from the byte counters of the two simulated collectives run (or traced)
    on real arrays, not from the 2(N-1)/N formula.
    """
    _require_parent(plot_path)
    from optinc_jax.network.volume import communication_volume

    counts = (*servers, *more_servers) or (4, 8, 16)
    with one_line_errors():
        rows = communication_volume(counts, size=size, bits=bits)
        if plot_path is not None:
            from optinc_jax.network.plots import plot_communication_volume

            plot_communication_volume(rows, plot_path)
    emit([row._asdict() for row in rows], as_json, _format_volume)


def _format_latency(result: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Fig. 7(b) as text, assumptions first."""
    rows = result if isinstance(result, list) else [result]
    a = rows[0]["assumptions"]
    lines = [
        f"assumptions: {a['device_tflops']} TFLOP/s x {a['utilization']} utilization, "
        f"{a['transceivers']} x {a['transceiver_gbps']} Gb/s transceivers per server, "
        f"{a['gradient_bits']}-bit gradients, ONN latency {a['onn_latency_s']} s, "
        f"N = {rows[0]['servers']}"
    ]
    for row in rows:
        paper = row["paper_reduction"]
        lines += [
            f"{row['model']}: {row['params']:,} parameters, batch {row['batch_per_server']} "
            f"per server, {row['flops_per_step']:.3e} FLOP per step",
            f"  compute {1e3 * row['compute_s']:.3f} ms; ring {1e3 * row['ring_comm_s']:.4f} ms "
            f"(x{row['ring_factor']:.3f}); OptINC {1e3 * row['optinc_comm_s']:.4f} ms "
            f"(x{row['optinc_factor']:.4f})",
            f"  OptINC saves {100 * row['reduction']:.3f} % of the ring iteration"
            + (
                ""
                if paper is None
                else f" (paper: {100 * paper:.0f} %; this model reaches it at a batch of "
                f"{row['batch_for_paper_reduction'] or 0:.3g} per server or "
                f"{row['gbps_for_paper_reduction'] or 0:.3g} Gb/s per transceiver)"
            ),
        ]
    return "\n".join(lines)


@main.command("latency")
@click.option(
    "--model",
    type=click.Choice(["resnet50", "llama", "both"]),
    default="resnet50",
    show_default=True,
    help="Model (FLOPs from XLA's cost analysis, parameters counted); both: a list.",
)
@click.option("--servers", type=click.IntRange(min=2), default=4, show_default=True)
@click.option(
    "--batch-per-server",
    type=click.IntRange(min=1),
    help="Examples per server per step [default: the model's, see network/model_cost.py].",
)
@click.option("--device-tflops", type=float, default=60.0, show_default=True)
@click.option("--utilization", type=float, default=0.6, show_default=True)
@click.option("--transceivers", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--transceiver-gbps", type=float, default=800.0, show_default=True)
@click.option("--gradient-bits", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--onn-latency-ns", type=float, default=0.0, show_default=True, help="Optical time of flight."
)
@plot_option
@json_option
def latency_command(
    model: str,
    servers: int,
    batch_per_server: int | None,
    device_tflops: float,
    utilization: float,
    transceivers: int,
    transceiver_gbps: float,
    gradient_bits: int,
    onn_latency_ns: float,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """Fig. 7(b): per-step compute and communication time, ring all-reduce vs OptINC."""
    _require_parent(plot_path)
    from optinc_jax.network.latency import LatencyAssumptions, latency_breakdown

    with one_line_errors():
        assumptions = LatencyAssumptions(
            device_tflops=device_tflops,
            utilization=utilization,
            transceivers=transceivers,
            transceiver_gbps=transceiver_gbps,
            gradient_bits=gradient_bits,
            onn_latency_s=onn_latency_ns * 1e-9,
            batch_per_server=batch_per_server,
        )
        models = ["resnet50", "llama"] if model == "both" else [model]
        rows = [latency_breakdown(name, servers, assumptions) for name in models]
        if plot_path is not None:
            from optinc_jax.network.plots import plot_latency

            plot_latency(rows, plot_path)
    documents = [row.to_json() for row in rows]
    emit(documents if model == "both" else documents[0], as_json, _format_latency)


@main.command("deploy")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), required=True, help="circuit .npz."
)
@json_option
def deploy_command(source: str, out_path: str, as_json: bool) -> None:
    """Compile SOURCE (a run directory or an exported weights.npz) into MZI phases."""
    from optinc_jax.learning.deployment import circuit_summary, deploy
    from optinc_jax.photonics.circuit import save_circuit

    with one_line_errors():
        circuit, _ = deploy(source)
        path = save_circuit(out_path, circuit)
        summary = circuit_summary(circuit)
    emit(
        {"path": str(path), **summary},
        as_json,
        lambda r: f"wrote {r['path']} ({r.get('mzis', '?')} MZIs)",
    )


@main.command("verify")
@click.argument("circuit_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--chunk-size", type=click.IntRange(min=1), help="Samples per chunk.")
@json_option
def verify_command(circuit_path: str, chunk_size: int | None, as_json: bool) -> None:
    """Run the exhaustive dataset through the meshes built from CIRCUIT_PATH's phases."""
    from optinc_jax.learning.deployment import verify_circuit
    from optinc_jax.photonics.circuit import load_circuit

    with one_line_errors():
        result = verify_circuit(load_circuit(circuit_path), chunk_size=chunk_size)

    def human(r: dict[str, Any]) -> str:
        return (
            f"phase-level accuracy {100 * r['accuracy']:.5f} % ({r['correct']:,} of "
            f"{r['total']:,}, invalid {r['invalid']}), digital {100 * r['digital_accuracy']:.5f} "
            f"%, max |deviation| {r['max_abs_deviation']:.3g}, {r['mzis']:,} MZIs"
        )

    emit(result, as_json, human)


@main.command("robustness")
@click.argument("source", type=click.Path(exists=True))
@noise_model_option
@click.option("--sweep", default="0:0.05:11", show_default=True, help="start:stop:count.")
@click.option("--trials", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--calibrate", is_flag=True, help="Refit each stage's gain under the noise.")
@plot_option
@json_option
def robustness_command(
    source: str,
    noise_model: str,
    sweep: str,
    trials: int,
    seed: int,
    calibrate: bool,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """Monte Carlo accuracy of SOURCE (circuit, weights.npz or run) against noise strength."""
    _require_parent(plot_path)
    from optinc_jax.learning.deployment import (
        load_circuit_or_deploy,
        parse_sweep,
        plot_robustness,
        robustness_sweep,
    )

    with one_line_errors():
        strengths = parse_sweep(sweep)
        circuit = load_circuit_or_deploy(source)
        result = robustness_sweep(
            circuit, noise_model, strengths, trials, seed, calibrate=calibrate
        )
        if plot_path is not None:
            plot_robustness(result, plot_path)
    emit(result, as_json, lambda r: json.dumps(r, indent=1, allow_nan=False))


def _simulate_servers_on_host(servers: int) -> None:
    """Ask XLA for ``servers`` virtual CPU devices, unless JAX is imported or told already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={servers}"


def _format_distributed(record: dict[str, Any]) -> str:
    """One paragraph about a finished data-parallel run."""
    heldout = record["heldout"]
    metric = (
        f"held-out accuracy {100 * heldout['accuracy']:.2f} %"
        if record["metric"] == "accuracy"
        else f"held-out loss {heldout['loss']:.4f} (perplexity {heldout['perplexity']:.3f})"
    )
    rate = record["steps_per_second"]
    return "\n".join(
        [
            f"{record['model']} ({record['parameters']:,} parameters) through "
            f"{record['allreduce']}, {record['servers']} servers, seed {record['seed']}",
            f"{record['steps']} steps: {metric}, final training loss {record['final_loss']:.4f}",
            f"{rate:.2f} steps/s on {record['devices']} {record['device']} devices"
            if rate is not None
            else f"on {record['devices']} {record['device']} devices",
        ]
    )


@main.command("train-distributed")
@click.option(
    "--model",
    default="resnet_small",
    show_default=True,
    help="resnet_small or llama_small (CPU sizes), resnet50 or llama_paper (the paper's).",
)
@click.option(
    "--allreduce",
    type=click.Choice(["exact", "ring", "optinc-ideal", "optinc-inject", "optinc-onn"]),
    default="exact",
    show_default=True,
    help="How the servers' gradients are averaged.",
)
@click.option("--servers", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--bits", type=click.IntRange(min=2), help="Gradient bits (optinc-ideal).")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps [model's recipe].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--data", "data_path", type=click.Path(), help="CIFAR-100 folder or text path.")
@click.option("--onn", "onn_path", type=click.Path(exists=True), help="optinc-onn's run.")
@click.option("--errors", help="optinc-inject's errors: table2:worst, table2:I or result.json.")
@click.option(
    "--rounding", type=click.Choice(["floor", "nearest"]), default="floor", show_default=True
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="runs/train_distributed",
    show_default=True,
    help="Run directory (checkpoints, result.json).",
)
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def train_distributed_command(
    model: str,
    allreduce: str,
    servers: int,
    bits: int | None,
    steps: int | None,
    seed: int,
    data_path: str | None,
    onn_path: str | None,
    errors: str | None,
    rounding: str,
    out_dir: str,
    resume: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a model data-parallel over simulated servers, averaging through ALLREDUCE.

    On a CPU the servers are virtual devices (this command asks XLA for them); on an
    accelerator they are its devices. The comparison of all the all-reduces with several
    seeds and the Fig. 7a figure is `python -m experiments.train_distributed`.
    """
    _simulate_servers_on_host(servers)
    from optinc_jax.network.distributed import DistributedConfig, train_distributed

    with one_line_errors():
        config = DistributedConfig(
            model=model,
            allreduce=allreduce,
            servers=servers,
            bits=bits,
            steps=steps,
            seed=seed,
            data=data_path,
            onn=onn_path,
            errors=errors,
            rounding=rounding,
        )
        result = train_distributed(config, out_dir, resume=resume, progress=not quiet)
    record = {key: value for key, value in result.record.items() if key != "history"}
    record["run_dir"] = out_dir
    emit(record, as_json, _format_distributed)


@main.command("finetune")
@click.argument("source", type=click.Path(exists=True))
@noise_model_option
@click.option("--strength", type=float, required=True, help="Its strength during training.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=2e-4, show_default=True)
@click.option("--trials", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), required=True, help="circuit .npz."
)
@click.option("--quiet", is_flag=True, help="No line per epoch.")
@json_option
def finetune_command(
    source: str,
    noise_model: str,
    strength: float,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    learning_rate: float,
    trials: int,
    seed: int,
    out_path: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Fine-tune SOURCE's phases (circuit, weights.npz or run) under sampled noise.

    Not in the paper: the circuit's physical settings are trained with the noise sampled in
    the phase-level forward pass; the kept circuit is still 100 % without noise when the
    input was. Measure it afterwards with `optinc robustness OUT --seed 1` (another seed
    than the selection's).
    """
    _require_parent(out_path)
    from optinc_jax.learning.deployment import load_circuit_or_deploy
    from optinc_jax.learning.finetune import (
        NoiseFinetuneConfig,
        finetune_circuit,
        finetune_summary,
    )
    from optinc_jax.photonics.circuit import save_circuit

    with one_line_errors():
        config = NoiseFinetuneConfig(
            noise_model=noise_model,
            strength=strength,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            batch_size=batch_size,
            learning_rate=learning_rate,
            trials=trials,
            seed=seed,
        )
        circuit = load_circuit_or_deploy(source)
        tuned, history = finetune_circuit(circuit, config, progress=not quiet and not as_json)
        path = save_circuit(out_path, tuned)
    result = {"path": str(path), **finetune_summary(history)}

    def human(r: dict[str, Any]) -> str:
        return (
            f"wrote {r['path']} (epoch {r['selected_epoch']} kept): mean accuracy under "
            f"{noise_model} noise {strength} {100 * r['noisy_accuracy_before']:.4f} % -> "
            f"{100 * r['noisy_accuracy_after']:.4f} %, noise-free "
            f"{100 * r['ideal_accuracy_after']:.5f} %"
        )

    emit(result, as_json, human)
