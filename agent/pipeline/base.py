"""The worker contract shared by every source kind."""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.events.schema import Event
from agent.sources.base import SourceState, StateTracker, StatusListener

logger = logging.getLogger(__name__)

EventSink = Callable[[Event], None]
"""Where a worker hands its events: the daemon validates, persists and routes them."""

TEST_STALL_ENV = "EDGE_AGENT_TEST_STALL_FILE"
"""Test-only fault hook, used by scripts/check-systemd.sh to prove that systemd's watchdog
restarts an agent with one stuck worker thread. Off unless this variable names a file. Then a
worker whose source id is the file's first word stops in ``beat`` (so it stops beating, as a
hung thread would) while the file exists and was written after the worker started; a restarted
agent is therefore not stuck again by the same file. Never set it in production."""


class Worker(ABC):
    """One source's processing thread.

    Subclasses implement ``_run`` (loop until ``self._stop`` is set, calling ``self.beat()``
    each iteration) and ``stats``. ``heartbeat_age`` lets the watchdog tell a hung thread from
    a healthy idle one: an idle loop still beats.
    """

    kind: str = "source"

    def __init__(
        self,
        source_id: str,
        emit: EventSink,
        clock: Clock,
        status_listener: StatusListener | None = None,
    ) -> None:
        self.source_id = source_id
        self._emit = emit
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = clock.monotonic()
        self.tracker = StateTracker(source_id, self.kind, clock, status_listener)
        self.detection_enabled = True
        self.events_emitted = 0
        self.crashed: str | None = None
        """Why the thread died of an exception (the watchdog then starves); None otherwise."""
        self._test_stall_file = os.environ.get(TEST_STALL_ENV) or None
        self._started_wall = time.time()

    def start(self) -> None:
        """Start the worker thread."""
        self._stop.clear()
        self.crashed = None
        self._last_beat = self._clock.monotonic()
        self._started_wall = time.time()
        self._thread = threading.Thread(
            target=self._guarded_run, name=f"{self.kind}:{self.source_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the thread to stop and wait for it up to ``timeout`` seconds."""
        self._stop.set()
        self._close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s %s: did not stop within %.1f s", self.kind, self.source_id,
                               timeout)
        self.tracker.set(SourceState.STOPPED)

    def beat(self) -> None:
        """Record progress; called by the loop every iteration, busy or idle."""
        if self._test_stall_file is not None:
            self._test_stall(self._test_stall_file)
        self._last_beat = self._clock.monotonic()

    def _test_stall(self, path: str) -> None:
        """The ``TEST_STALL_ENV`` fault hook: block here, without beating, while asked to."""
        logged = False
        while not self._stop.is_set():
            try:
                # Wall time on purpose: it is compared with the file's modification time.
                stale = os.stat(path).st_mtime < self._started_wall
                words = Path(path).read_text(encoding="utf-8").split()
            except OSError:
                return
            if stale or not words or words[0] != self.source_id:
                return
            if not logged:
                logger.warning("%s %s: stuck on purpose by the test-only fault hook %s=%s",
                               self.kind, self.source_id, TEST_STALL_ENV, path)
                logged = True
            self._stop.wait(0.5)

    def heartbeat_age(self) -> float:
        """Seconds since the loop last made progress (0 when not running)."""
        if self._thread is None or not self._thread.is_alive():
            return 0.0
        return self._clock.monotonic() - self._last_beat

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def emit(self, event: Event) -> None:
        """Hand an event downstream and count it."""
        self._emit(event)
        self.events_emitted += 1

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a source's bug must not take the agent down
            logger.exception("%s %s: worker failed: %s", self.kind, self.source_id, exc)
            self.crashed = f"{type(exc).__name__}: {exc}"
            self.tracker.set(SourceState.ERROR, f"worker failed: {exc}")

    def _close(self) -> None:  # noqa: B027  (an optional hook, not an abstract step)
        """Release what blocks the loop (devices, sockets) so it notices the stop."""

    @abstractmethod
    def _run(self) -> None:
        """The loop; returns when ``self._stop`` is set or the source ended."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Figures for the stats topic (state, fps, inference ms, events...)."""
