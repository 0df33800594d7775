"""One writer per run directory: an exclusive OS file lock held for a run's lifetime.

:func:`run_directory_lock` creates the run directory if needed, opens ``.lock`` in it and
takes a non-blocking exclusive ``flock``. The lock belongs to the open file description, so
the kernel releases it when the process exits for any reason (SIGKILL included): a killed
run never leaves a stale lock, and the ``.lock`` file left behind is harmless. The holder
writes its PID into the file so that a second writer's error can name it.

Opening the lock file is also the first write into the directory, so an unwritable or
read-only run directory is reported here, before any training starts.

POSIX only (``fcntl``); the package targets Linux and macOS.
"""

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_FILE", "RunDirectoryBusy", "RunDirectoryUnwritable", "run_directory_lock"]

LOCK_FILE = ".lock"
"""Name of the lock file inside a run directory."""


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunDirectoryUnwritable(OSError):
    """The run directory cannot be created or written."""


@contextlib.contextmanager
def run_directory_lock(workdir: str | Path) -> Iterator[Path]:
    """Holds the exclusive writer lock of ``workdir`` for the duration of the block.

    Args:
        workdir: the run directory (created with its parents if absent).

    Yields:
        The run directory as a ``Path``.

    Raises:
        RunDirectoryUnwritable: if the directory cannot be created or the lock file cannot
            be written (read-only file system, permissions, disk full).
        RunDirectoryBusy: if another process holds the lock; the message names its PID.
    """
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunDirectoryUnwritable(
            f"cannot write to the run directory {workdir}: {error.strerror or error}"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirectoryBusy(
                f"the run directory {workdir} is in use by another run (PID {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise RunDirectoryUnwritable(
                    f"cannot write to the run directory {workdir}: {error.strerror}"
                ) from None
            raise
        yield workdir
    finally:
        os.close(descriptor)  # releases the lock
