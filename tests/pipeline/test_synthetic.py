"""The synthetic source: a steady rate, or bursts like a sensor that fires now and then."""

from __future__ import annotations

import itertools
import threading
import time

from agent.clock import SystemClock
from agent.events.schema import DeviceRef, Event
from agent.pipeline.synthetic import SyntheticWorker
from agent.sources.config import SyntheticConfig


def _arrivals(config: SyntheticConfig, n: int) -> list[float]:
    times: list[float] = []
    done = threading.Event()

    def emit(event: Event) -> None:
        times.append(time.monotonic())
        if len(times) >= n:
            done.set()

    worker = SyntheticWorker(config, DeviceRef(id="dev"), emit, SystemClock())
    worker.start()
    try:
        assert done.wait(30), f"only {len(times)} events"
    finally:
        worker.stop()
    return times[:n]


def test_bursts_are_separated_by_their_pause() -> None:
    times = _arrivals(SyntheticConfig(id="door", rate=50, labels=["knock"], burst=3,
                                      burst_pause=0.4), 9)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # After every third event the sensor rests for at least burst_pause.
    between = gaps[2::3]
    within = [g for i, g in enumerate(gaps) if i % 3 != 2]
    assert len(between) == 2 and min(between) >= 0.4, gaps
    assert max(within) < min(between), gaps


def test_without_bursts_the_rate_is_steady() -> None:
    times = _arrivals(SyntheticConfig(id="beat", rate=50, labels=["knock"]), 8)
    assert times[-1] - times[0] < 0.4  # 7 intervals of 20 ms, no pause anywhere


def test_a_long_pause_between_bursts_keeps_the_heartbeat() -> None:
    config = SyntheticConfig(id="door", rate=50, labels=["knock"], burst=1, burst_pause=30)
    worker = SyntheticWorker(config, DeviceRef(id="dev"), lambda event: None, SystemClock())
    worker.start()
    try:
        time.sleep(2.5)  # the first event, then the pause
        # The watchdog calls a thread hung after HUNG_FLOOR_S (3 s) without a beat.
        assert worker.heartbeat_age() < 1.5
    finally:
        worker.stop()
