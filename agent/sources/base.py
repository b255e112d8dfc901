"""What every source shares: its life as a state machine, and how it reports it."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from agent.clock import Clock


class SourceState(str, Enum):
    """The life of anything that connects and reconnects."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SourceStatus:
    """A source's state as published retained on ``.../sources/{id}/status``."""

    source_id: str
    kind: str
    state: SourceState
    since: float
    detail: str | None = None
    reconnects: int = 0

    def to_dict(self) -> dict[str, object]:
        """The JSON payload of the status topic (never carries credentials)."""
        return {
            "source_id": self.source_id,
            "kind": self.kind,
            "state": self.state.value,
            "since": self.since,
            "detail": self.detail,
            "reconnects": self.reconnects,
        }


StatusListener = Callable[[SourceStatus], None]


class StateTracker:
    """Holds a source's state, tells a listener about changes, counts reconnects.

    Thread-safe: readers (stats, the watchdog) and the source's own thread share it.
    """

    def __init__(
        self, source_id: str, kind: str, clock: Clock, listener: StatusListener | None = None
    ) -> None:
        self.source_id = source_id
        self.kind = kind
        self._clock = clock
        self._listener = listener
        self._lock = threading.Lock()
        self._status = SourceStatus(source_id, kind, SourceState.STARTING, clock.time())
        self._reconnect_times: deque[float] = deque()
        self.reconnects_total = 0

    @property
    def status(self) -> SourceStatus:
        with self._lock:
            return self._status

    @property
    def state(self) -> SourceState:
        return self.status.state

    def set(self, state: SourceState, detail: str | None = None) -> None:
        """Move to ``state``; the listener hears only real changes (state or detail)."""
        with self._lock:
            if state is SourceState.RECONNECTING and self._status.state is not state:
                self.reconnects_total += 1
                self._reconnect_times.append(self._clock.monotonic())
            if self._status.state is state and self._status.detail == detail:
                return
            self._status = SourceStatus(
                self.source_id, self.kind, state, self._clock.time(), detail,
                self.reconnects_total,
            )
            status = self._status
        if self._listener is not None:
            self._listener(status)

    def reconnects_last_hour(self) -> int:
        """Reconnects within the last 3600 s of monotonic time."""
        horizon = self._clock.monotonic() - 3600.0
        with self._lock:
            while self._reconnect_times and self._reconnect_times[0] < horizon:
                self._reconnect_times.popleft()
            return len(self._reconnect_times)
