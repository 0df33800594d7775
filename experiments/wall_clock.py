"""A wall-time limit for training runs, checked at the end of every epoch."""

import time
from typing import Any

__all__ = ["EpochClock", "TimeUp"]


class TimeUp(Exception):
    """Raised by :class:`EpochClock` at the end of the first epoch past its limit."""


class EpochClock:
    """An ``on_epoch_end`` callback of ``train_onn``: times epochs, stops a late run.

    Created just before ``train_onn`` is called; at the end of every epoch it records the
    wall seconds since its creation and the trainer's history, then raises
    :class:`TimeUp` once ``limit_s`` has passed (the epoch's checkpoint, if any, is
    already written).

    Attributes:
        limit_s: wall seconds after which the run stops at the end of an epoch.
        last_epoch: the run's last epoch, or ``None``: that epoch never raises, since the
            run has done its work by then (its finishing and refit included) and stopping
            it would only keep it from writing its ``result.json``.
        epoch_ends: ``[epochs]`` wall seconds at the end of each epoch (the first holds
            the compilation).
        history: the trainer's history at the last epoch (``loss``, ``eval_epoch``,
            ``accuracy``, ``min_margin``, ...).
    """

    def __init__(self, limit_s: float, last_epoch: int | None = None):
        self.limit_s = float(limit_s)
        self.last_epoch = last_epoch
        self.epoch_ends: list[float] = []
        self.history: dict[str, Any] = {}
        self._start = time.perf_counter()

    def __call__(self, epoch: int, history: dict) -> None:
        """Records the epoch's end and raises :class:`TimeUp` past the limit."""
        self.epoch_ends.append(time.perf_counter() - self._start)
        self.history = history
        if self.epoch_ends[-1] > self.limit_s and epoch != self.last_epoch:
            raise TimeUp

    @property
    def seconds(self) -> float:
        """Wall seconds since the clock was created."""
        return time.perf_counter() - self._start

    def seconds_per_epoch_after_first(self) -> float | None:
        """Mean wall seconds of the epochs after the first; ``None`` below two epochs."""
        ends = self.epoch_ends
        return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else None
