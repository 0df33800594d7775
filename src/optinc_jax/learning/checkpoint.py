"""Atomic, resumable training checkpoints on orbax.

A checkpoint holds the flat list of the training state's leaves (parameters and optimizer
state), the epoch reached and a JSON record (config and history). Orbax writes each step
to a temporary directory and renames it when complete, so a killed run leaves either the
previous checkpoint or the new one, never half of one. Restoring needs a template state of
the same structure (a freshly initialized one), which also checks that shapes match.
"""

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "TrainCheckpointer"]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


class TrainCheckpointer:
    """Saves and restores ``(state, epoch, record)`` under ``directory``.

    Args:
        directory: checkpoint root (created if absent).
        max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_epoch(self) -> int | None:
        """Epoch of the newest complete checkpoint, or ``None`` if there is none."""
        return self._manager.latest_step()

    def save(self, epoch: int, state: Any, record: dict) -> None:
        """Writes a checkpoint atomically.

        Args:
            epoch: epochs completed (the checkpoint's step number).
            state: pytree of arrays (parameters, optimizer state, ...).
            record: JSON-serializable metadata (config, history).
        """
        leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]
        self._manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"leaves": leaves}),
                record=ocp.args.JsonSave(json.loads(json.dumps(record))),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, template: Any, epoch: int | None = None) -> tuple[Any, int, dict]:
        """Restores a checkpoint into the structure of ``template``.

        Args:
            template: a state pytree of the saved structure, shapes and dtypes.
            epoch: which checkpoint; the latest by default.

        Returns:
            ``(state, epoch, record)``.

        Raises:
            CheckpointError: if there is no checkpoint, it cannot be read, or its leaves do
                not match the template.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        template_leaves, treedef = jax.tree_util.tree_flatten(template)
        abstract = {
            "leaves": [
                np.zeros(np.shape(leaf), dtype=np.asarray(leaf).dtype) for leaf in template_leaves
            ]
        }
        try:
            restored = self._manager.restore(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax raises many kinds; all mean "unreadable" here
            raise CheckpointError(
                f"checkpoint of epoch {epoch} in {self.directory} is corrupt or unreadable: "
                f"{type(error).__name__}: {error}"
            ) from error
        leaves = restored["state"]["leaves"]
        mismatched = [
            (i, np.shape(got), np.shape(want))
            for i, (got, want) in enumerate(zip(leaves, template_leaves, strict=True))
            if np.shape(got) != np.shape(want)
        ]
        if len(leaves) != len(template_leaves) or mismatched:
            raise CheckpointError(
                f"checkpoint of epoch {epoch} in {self.directory} does not match the model: "
                f"{len(leaves)} leaves vs {len(template_leaves)} expected, mismatched "
                f"(index, saved, expected) shapes {mismatched[:3]}"
            )
        return jax.tree_util.tree_unflatten(treedef, leaves), epoch, dict(restored["record"])

    def restore_record(self, epoch: int | None = None) -> dict:
        """The JSON record of a checkpoint (config, history) without its arrays.

        Args:
            epoch: which checkpoint; the latest by default.

        Returns:
            The record saved with that checkpoint.

        Raises:
            CheckpointError: if there is no checkpoint or its record cannot be read.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        try:
            restored = self._manager.restore(
                epoch, args=ocp.args.Composite(record=ocp.args.JsonRestore())
            )
        except Exception as error:  # orbax raises many kinds; all mean "unreadable" here
            raise CheckpointError(
                f"record of the epoch-{epoch} checkpoint in {self.directory} is corrupt or "
                f"unreadable: {type(error).__name__}: {error}"
            ) from error
        return dict(restored["record"])

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
