"""experiments/wall_clock.py: the epoch clock records every epoch and stops a late run."""

import time

import pytest

from experiments.wall_clock import EpochClock, TimeUp


def test_clock_records_epochs_within_its_limit():
    clock = EpochClock(limit_s=60)
    assert clock.seconds_per_epoch_after_first() is None
    for epoch in (1, 2, 3):
        time.sleep(0.01)
        clock(epoch, {"accuracy": [epoch]})
    assert len(clock.epoch_ends) == 3 and clock.epoch_ends == sorted(clock.epoch_ends)
    assert clock.history == {"accuracy": [3]}
    per_epoch = clock.seconds_per_epoch_after_first()
    assert per_epoch == (clock.epoch_ends[2] - clock.epoch_ends[0]) / 2 and per_epoch >= 0.01
    assert clock.seconds >= clock.epoch_ends[-1]


def test_clock_stops_at_the_end_of_the_first_epoch_past_its_limit():
    clock = EpochClock(limit_s=0.05)
    clock(1, {})  # within the limit
    time.sleep(0.06)
    with pytest.raises(TimeUp):
        clock(2, {"accuracy": [0.5]})
    assert len(clock.epoch_ends) == 2 and clock.history == {"accuracy": [0.5]}


def test_clock_lets_the_last_epoch_end_past_its_limit():
    # the run's work is done by then: stopping it would only lose its result.json
    clock = EpochClock(limit_s=0.0, last_epoch=3)
    with pytest.raises(TimeUp):
        clock(2, {})
    clock(3, {"accuracy": [1.0]})
    assert len(clock.epoch_ends) == 2 and clock.history == {"accuracy": [1.0]}
