"""The test-only stuck-thread hook (agent.pipeline.base.TEST_STALL_ENV) that
scripts/check-systemd.sh uses against a real systemd watchdog: off without its variable,
stalls only the named worker, and never stalls a worker started after the file was written."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.events.schema import DeviceRef, Event
from agent.pipeline.base import TEST_STALL_ENV
from agent.pipeline.synthetic import SyntheticWorker
from agent.sources.config import SyntheticConfig


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def count(self) -> int:
        with self.lock:
            return len(self.events)


def worker(source_id: str, sink: Sink) -> SyntheticWorker:
    return SyntheticWorker(SyntheticConfig(id=source_id, rate=50), DeviceRef(id="edge-01"),
                           sink, SystemClock())


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_the_named_worker_stops_beating_and_emitting_while_the_file_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stall = tmp_path / "stall"
    monkeypatch.setenv(TEST_STALL_ENV, str(stall))
    stuck_sink, other_sink = Sink(), Sink()
    stuck, other = worker("heartbeat", stuck_sink), worker("other", other_sink)
    stuck.start()
    other.start()
    try:
        assert wait_for(lambda: stuck_sink.count() > 3)
        stall.write_text("heartbeat\n")
        time.sleep(0.3)
        frozen = stuck_sink.count()
        time.sleep(1.5)
        assert stuck_sink.count() == frozen  # no event while stuck
        assert stuck.heartbeat_age() > 1.0  # what the daemon's health check sees
        assert other.heartbeat_age() < 1.0 and other_sink.count() > 20
        stall.unlink()
        assert wait_for(lambda: stuck_sink.count() > frozen + 3)
        assert stuck.heartbeat_age() < 1.0
    finally:
        stuck.stop(2.0)
        other.stop(2.0)
        assert not stuck.alive and not other.alive


def test_a_file_older_than_the_worker_does_not_stall_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stall = tmp_path / "stall"
    stall.write_text("heartbeat\n")
    old = time.time() - 60
    os.utime(stall, (old, old))  # written before this "restarted" agent began
    monkeypatch.setenv(TEST_STALL_ENV, str(stall))
    sink = Sink()
    w = worker("heartbeat", sink)
    w.start()
    try:
        assert wait_for(lambda: sink.count() > 20)
        assert w.heartbeat_age() < 1.0
    finally:
        w.stop(2.0)


def test_without_the_variable_the_file_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_STALL_ENV, raising=False)
    sink = Sink()
    w = worker("heartbeat", sink)
    w.start()
    try:
        # Even a file at a path someone might guess changes nothing: the hook is off.
        (tmp_path / "stall").write_text("heartbeat\n")
        assert wait_for(lambda: sink.count() > 20)
        assert w.heartbeat_age() < 1.0
    finally:
        w.stop(2.0)
