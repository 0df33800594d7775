"""Reporting: the JSON record of an evaluated network, the training curve, atomic JSON.

Used by the trainer and by ``optinc evaluate`` alike, so a result is formatted in one place
whoever produced it.
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optinc_jax.learning.evaluate import EvaluationResult
from optinc_jax.photonics.area import onn_area
from optinc_jax.scenarios import Scenario

__all__ = ["evaluation_record", "plot_training_curve", "write_json_atomically"]


def evaluation_record(
    scenario: Scenario, approx_layers: Sequence[int], evaluation: EvaluationResult
) -> dict[str, Any]:
    """JSON-ready description of an evaluated network: scenario, accuracy, errors, area.

    Args:
        scenario: the scenario.
        approx_layers: 1-based approximated weight matrices.
        evaluation: its exhaustive evaluation.

    Returns:
        ``scenario, bits, servers, layers, approx``, the fields of
        :meth:`EvaluationResult.to_json` and ``area_ratio, mzis, mzis_full``.
    """
    area = onn_area(scenario.layers, tuple(approx_layers))
    return {
        "scenario": scenario.name,
        "bits": scenario.bits,
        "servers": scenario.servers,
        "layers": scenario.layers_string,
        "approx": list(approx_layers),
        **evaluation.to_json(),
        "area_ratio": area.area_ratio,
        "mzis": area.mzis,
        "mzis_full": area.mzis_full,
    }


def write_json_atomically(path: str | Path, document: Any) -> Path:
    """Writes strict JSON (no NaN or infinity) to ``path`` atomically.

    The document goes to a temporary file beside ``path``, is flushed to disk and renamed
    over ``path``, so a reader sees the old file or the new one, never half of one.

    Args:
        path: destination.
        document: JSON-serialisable value without NaN or infinite floats.

    Returns:
        The written path.

    Raises:
        ValueError: if the document holds NaN or infinity (nothing is written).
    """
    path = Path(path)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    temporary.replace(path)
    return path


def plot_training_curve(history: dict[str, Any], path: str | Path, title: str) -> None:
    """Training loss per epoch and the projected network's exhaustive error rate.

    Args:
        history: ``loss`` (per epoch), ``eval_epoch`` and ``accuracy`` (per evaluation) and
            ``switch_epoch`` (first stage-2 epoch), as the trainer records them.
        path: PNG to write.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = range(1, len(history["loss"]) + 1)
    ax_loss.semilogy(epochs, history["loss"], color="tab:blue")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss (stage 1 | stage 2)")
    ax_loss.axvline(history["switch_epoch"] + 0.5, color="gray", ls=":", lw=1)
    errors = [max(1.0 - acc, 1e-9) for acc in history["accuracy"]]
    ax_acc.semilogy(history["eval_epoch"], errors, "o-", color="tab:red", ms=3)
    ax_acc.set(
        xlabel="epoch",
        ylabel="1 - accuracy (projected network)",
        title="exhaustive error rate (1e-9 = exact)",
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
