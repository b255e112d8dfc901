"""Injectable clocks: wall time for timestamps, monotonic time for intervals.

Logic that depends on time (rule windows, tracking, TTL, backoff) takes a ``Clock`` so tests
run minutes of windows in milliseconds without sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    """Source of wall and monotonic time."""

    def time(self) -> float:
        """Seconds since the Unix epoch (wall clock, UTC)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""


class SystemClock:
    """The real clocks of the machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; for tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds


def utc_datetime(epoch_seconds: float) -> datetime:
    """An aware UTC datetime truncated to milliseconds, as events carry it."""
    dt = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return dt.replace(microsecond=(dt.microsecond // 1000) * 1000)
