"""The systemd watchdog starves when a source thread hangs (Daemon in-process)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import agent.daemon as daemon_module
from agent.config import AgentConfig
from agent.daemon import Daemon
from agent.notify import SystemdNotifier
from agent.pipeline.base import Worker
from agent.sources.base import SourceState
from agent.sources.config import SourceCommon
from scripts.harness.agent_process import base_config
from scripts.harness.broker import Broker


class HangingWorker(Worker):
    """A source whose loop blocks (a stuck device read) without ever beating."""

    kind = "synthetic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released = threading.Event()

    def _run(self) -> None:
        self.tracker.set(SourceState.RUNNING)
        self.released.wait()  # no beat() while blocked

    def _close(self) -> None:
        self.released.set()  # like closing the device under a blocked read

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.tracker.state.value}


def notifier(sock_path: Path, watchdog_s: float | None) -> SystemdNotifier:
    env = {"NOTIFY_SOCKET": str(sock_path)}
    if watchdog_s is not None:
        env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
    return SystemdNotifier(env)


def receive(sock: socket.socket, seconds: float) -> list[str]:
    """Every notification that arrives within ``seconds``."""
    got: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            got.append(sock.recv(4096).decode())
    return got


def test_hang_threshold_follows_the_watchdog_interval(tmp_path: Path) -> None:
    config = AgentConfig(**base_config(tmp_path, 1))
    cases = {None: 20.0, 30.0: 15.0, 8.0: 4.0, 1.0: daemon_module.HUNG_FLOOR_S, 60.0: 20.0}
    for watchdog_s, expected in cases.items():
        d = Daemon(config, notifier=notifier(tmp_path / "none.sock", watchdog_s))
        try:
            assert d.hung_after() == expected, watchdog_s
        finally:
            d.outbox.close()


def test_a_hung_source_starves_the_watchdog_and_is_named(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # WatchdogSec=4 -> hung after 2 s (half of it); the floor is lowered so the test is short.
    monkeypatch.setattr(daemon_module, "HUNG_FLOOR_S", 1.0)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    config = AgentConfig(**base_config(tmp_path, broker.port, synthetic=[
        {"id": "healthy", "rate": 5}, {"id": "stuck", "rate": 5}]))
    daemon = Daemon(config, notifier=notifier(sock_path, 4.0))
    assert daemon.hung_after() == 2.0
    real_build = daemon.build_worker

    def build(source: SourceCommon) -> Worker:
        if source.id == "stuck":
            return HangingWorker(source.id, daemon.dispatcher.emit, daemon.clock,
                                 daemon._status_listener)
        return real_build(source)

    daemon.build_worker = build  # type: ignore[method-assign]
    runner = threading.Thread(target=daemon.run, name="test-daemon")
    try:
        with caplog.at_level(logging.INFO, logger="agent.daemon"):
            runner.start()
            seen: list[str] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "stuck: no progress" not in caplog.text:
                seen += receive(sock, 0.3)
            assert "READY=1" in seen and "WATCHDOG=1" in seen, seen
            assert "stuck: no progress" in caplog.text
            assert "healthy: no progress" not in caplog.text
            receive(sock, 0.3)  # a ping already in the socket before the check failed
            later = receive(sock, 3.0)
            assert "WATCHDOG=1" not in later, later
            assert caplog.text.count("stuck: no progress") == 1, "logged once, not per beat"
    finally:
        daemon.request_stop()
        runner.join(15)
        sock.close()
    assert not runner.is_alive()
