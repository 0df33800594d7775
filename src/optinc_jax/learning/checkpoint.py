"""Atomic, resumable training checkpoints on orbax.

A checkpoint holds the flat list of the training state's leaves (parameters and optimizer
state), the epoch reached and a JSON record (config and history). Orbax writes each step
to a temporary directory and renames it when complete, so a killed run leaves either the
previous checkpoint or the new one, never half of one. Restoring needs a template state of
the same structure (a freshly initialized one), which also checks that shapes match.
"""

import contextlib
import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "CheckpointWriteError", "TrainCheckpointer"]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another configuration."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous one is kept."""


@contextlib.contextmanager
def _quiet_orbax_errors():
    """Silence orbax's own error logging (tracebacks from its writer threads) while saving.

    A failed save is reported once, as a :class:`CheckpointWriteError`; the same failure
    logged again from each of orbax's threads would bury that line. (The futures of a failed
    write also print "Event loop is closed" tracebacks when they are garbage-collected; the
    ``optinc`` command collects them silently, see :func:`optinc_jax.cli.one_line_errors`.)
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _os_error_in_chain(error: BaseException) -> OSError | None:
    """The first ``OSError`` among an exception, its causes and its contexts."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


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
            record: JSON-serializable metadata (config, history), strict JSON.

        Raises:
            CheckpointWriteError: if the checkpoint cannot be written (for example a full
                disk); the partial files are removed and the previous checkpoint is kept.
            ValueError: if ``record`` holds NaN or infinity.
        """
        leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]
        document = json.loads(json.dumps(record, allow_nan=False))
        failure = None
        with _quiet_orbax_errors():
            try:
                self._manager.save(
                    epoch,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave({"leaves": leaves}),
                        record=ocp.args.JsonSave(document),
                    ),
                    force=True,
                )
                self._manager.wait_until_finished()
            except Exception as error:  # orbax and tensorstore raise many kinds
                failure = self._write_error(epoch, error)
        if failure is not None:
            raise failure

    def _write_error(self, epoch: int, error: Exception) -> CheckpointWriteError:
        """One-line description of a failed save; removes its partial temporary files."""
        for partial in self.directory.glob(f"{epoch}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        cause = _os_error_in_chain(error)
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            free = None
        if cause is not None and cause.strerror:
            reason = cause.strerror
        elif "No space left on device" in str(error) or (free is not None and free < 1 << 20):
            reason = "No space left on device"
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        space = f" ({free / 2**20:.1f} MiB free)" if free is not None else ""
        kept = self.latest_epoch()
        return CheckpointWriteError(
            f"could not write the checkpoint of epoch {epoch} to {self.directory}: "
            f"{reason}{space}; "
            + (f"the checkpoint of epoch {kept} is kept" if kept is not None else "none is kept")
            + ", free space and continue with --resume",
        )

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
