"""Log lines for conditions that repeat many times a second: one line, then a count a minute.

A full disk or a full outbox drops or refuses every new message; a line per message would
flood the journal (2,754 ERROR lines at 50 a second in one fault run) and bury the one line
that says what is wrong.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

SUMMARY_INTERVAL_S = 60.0


class RepeatSummary:
    """Logs the first occurrence of a condition in full, then counts the rest.

    ``add`` the occurrences as they come (a reason and how many); while they continue, one
    line a minute gives the count since the last line, by reason. A quiet minute ends the
    episode with one last count if any was left, and the next occurrence is logged in full
    again. ``tick`` (called now and then, e.g. once a second) writes those lines when no new
    occurrence comes to do it.
    """

    def __init__(self, logger: logging.Logger, subject: str, clock: Callable[[], float],
                 level: int = logging.WARNING, interval: float = SUMMARY_INTERVAL_S) -> None:
        self._lock = threading.Lock()  # callers may be several threads (the daemon's workers)
        self._logger = logger
        self._subject = subject
        self._clock = clock
        self._level = level
        self._interval = interval
        self._since: float | None = None  # time of the last line; None: no episode
        self._counts: dict[str, int] = {}
        self._last_add = 0.0

    @property
    def active(self) -> bool:
        """True from the first occurrence until a quiet interval has been reported."""
        return self._since is not None

    def add(self, reason: str, count: int, first_line: Callable[[], str]) -> None:
        """Count ``count`` occurrences; ``first_line()`` is logged when an episode starts."""
        with self._lock:
            now = self._clock()
            self._last_add = now
            if self._since is None:
                self._since = now
                self._logger.log(self._level, "%s", first_line())
                return
            self._counts[reason] = self._counts.get(reason, 0) + count
            self._tick()

    def tick(self) -> None:
        """Write the count once an interval has passed; end the episode after a quiet one."""
        with self._lock:
            self._tick()

    def _tick(self) -> None:
        if self._since is None:
            return
        now = self._clock()
        if now - self._since < self._interval:
            return
        if self._counts:
            total = sum(self._counts.values())
            detail = ", ".join(f"{reason} {n}" for reason, n in sorted(self._counts.items()))
            self._logger.log(self._level, "%s: %d more in the last %.0f s (%s)",
                             self._subject, total, now - self._since, detail)
            self._counts = {}
        if now - self._last_add >= self._interval:
            self._since = None  # quiet for an interval: the next one is logged in full
        else:
            self._since = now
