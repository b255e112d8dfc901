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


def replace_worker(daemon: Daemon, source_id: str, cls: type[Worker]) -> None:
    """The daemon builds a ``cls`` for ``source_id``, and its own workers for the rest."""
    real_build = daemon.build_worker

    def build(source: SourceCommon) -> Worker:
        if source.id == source_id:
            return cls(source.id, daemon.dispatcher.emit, daemon.clock, daemon._status_listener)
        return real_build(source)

    daemon.build_worker = build  # type: ignore[method-assign]


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
    replace_worker(daemon, "stuck", HangingWorker)
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


class SlowWorker(HangingWorker):
    """A source whose every step takes 1.5 s (a big model on a small board), beating between."""

    def _run(self) -> None:
        self.tracker.set(SourceState.RUNNING)
        while not self.released.wait(1.5):
            self.beat()


class CrashingWorker(HangingWorker):
    """A source that goes round a few times, then dies of an injected exception."""

    def _run(self) -> None:
        self.tracker.set(SourceState.RUNNING)
        for _ in range(10):
            self.beat()
            if self.released.wait(0.2):
                return
        raise RuntimeError("injected fault")


def run_until(daemon: Daemon, sock: socket.socket, caplog: pytest.LogCaptureFixture,
              needle: str) -> list[str]:
    """Run the daemon on a thread until ``needle`` is logged; every notification seen."""
    seen: list[str] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and needle not in caplog.text:
        seen += receive(sock, 0.3)
    assert needle in caplog.text, caplog.text
    return seen


@pytest.fixture
def notify_socket(tmp_path: Path) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.mark.parametrize("slowest_run_s", [0.0, 0.75])
def test_a_slow_source_is_hung_unless_inference_is_that_slow_here(
    tmp_path: Path, broker: Broker, notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, slowest_run_s: float,
) -> None:
    """WatchdogSec=2: hung after 1 s. Steps of 1.5 s are a hang, unless the slowest
    inference run seen was 0.75 s: then a source has 4 x 0.75 = 3 s."""
    import agent.inference.session as session_module

    monkeypatch.setattr(daemon_module, "HUNG_FLOOR_S", 1.0)
    monkeypatch.setattr(session_module, "_slowest_run_s", slowest_run_s)
    config = AgentConfig(**base_config(tmp_path, broker.port, synthetic=[
        {"id": "slow", "rate": 5}]))
    daemon = Daemon(config, notifier=notifier(tmp_path / "notify.sock", 2.0))
    replace_worker(daemon, "slow", SlowWorker)
    runner = threading.Thread(target=daemon.run, name="test-daemon")
    try:
        with caplog.at_level(logging.INFO, logger="agent.daemon"):
            runner.start()
            seen = receive(notify_socket, 3.5)
            tail = receive(notify_socket, 1.0)
    finally:
        daemon.request_stop()
        runner.join(15)
    assert "READY=1" in seen
    if slowest_run_s:
        assert "slow: no progress" not in caplog.text
        assert "WATCHDOG=1" in tail, "still feeding systemd"
        assert ("inference takes up to 0.8 s on this device: a source is called hung after "
                "3 s without progress (not 1 s)") in caplog.text
    else:
        assert "slow: no progress" in caplog.text


def test_a_dead_mqtt_thread_starves_the_watchdog(
    tmp_path: Path, notify_socket: socket.socket, caplog: pytest.LogCaptureFixture,
) -> None:
    # A CA file that is missing (here: removed after check-config) kills paho's tls_set on
    # the network thread; its heartbeat age then reads 0, which must not count as healthy.
    config = AgentConfig(**base_config(tmp_path, 1, mqtt={
        "tls": {"enabled": True, "ca_file": str(tmp_path / "gone-ca.pem")}}))
    daemon = Daemon(config, notifier=notifier(tmp_path / "notify.sock", 3.0))
    runner = threading.Thread(target=daemon.run, name="test-daemon")
    try:
        with caplog.at_level(logging.INFO, logger="agent.daemon"):
            runner.start()
            seen = run_until(daemon, notify_socket, caplog, "no longer feeding the watchdog")
            assert "READY=1" in seen
            assert "thread mqtt died: FileNotFoundError" in caplog.text
            assert "mqtt is dead (FileNotFoundError" in caplog.text
            receive(notify_socket, 0.3)  # a ping sent before the check
            later = receive(notify_socket, 3.0)
            assert "WATCHDOG=1" not in later, later
            assert caplog.text.count("mqtt is dead") == 1, "logged once, not per beat"
    finally:
        daemon.request_stop()
        runner.join(15)
    assert not runner.is_alive()


def test_a_worker_killed_by_an_exception_starves_the_watchdog(
    tmp_path: Path, broker: Broker, notify_socket: socket.socket,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = AgentConfig(**base_config(tmp_path, broker.port, synthetic=[
        {"id": "healthy", "rate": 5}, {"id": "doomed", "rate": 5}]))
    daemon = Daemon(config, notifier=notifier(tmp_path / "notify.sock", 3.0))
    replace_worker(daemon, "doomed", CrashingWorker)
    runner = threading.Thread(target=daemon.run, name="test-daemon")
    try:
        with caplog.at_level(logging.INFO):
            runner.start()
            seen = run_until(daemon, notify_socket, caplog, "source doomed is dead")
            assert "WATCHDOG=1" in seen, "fed while the worker was alive and going round"
            assert "RuntimeError: injected fault" in caplog.text
            assert "source healthy is dead" not in caplog.text
            receive(notify_socket, 0.3)
            later = receive(notify_socket, 3.0)
            assert "WATCHDOG=1" not in later, later
    finally:
        daemon.request_stop()
        runner.join(15)
    assert not runner.is_alive()


@pytest.mark.skipif(not Path("/etc/ssl/certs/ca-certificates.crt").is_file(),
                    reason="no system CA bundle (Debian's ca-certificates) to copy")
def test_the_agent_process_stops_feeding_systemd_when_its_ca_file_goes(
    tmp_path: Path, notify_socket: socket.socket,
) -> None:
    """End to end, as systemd runs it: the CA file is there when the agent starts (and passes
    the configuration check), then removed; the next reconnect kills the MQTT thread."""
    import shutil

    from scripts.harness.agent_process import AgentProcess
    from scripts.harness.broker import free_port

    ca = tmp_path / "ca.pem"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    config = base_config(tmp_path, free_port(), mqtt={  # nobody listens: it keeps reconnecting
        "tls": {"enabled": True, "ca_file": str(ca)}})
    agent = AgentProcess(tmp_path, config, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "3000000"}).start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen.count("WATCHDOG=1") < 2:
            seen += receive(notify_socket, 0.3)
        assert "READY=1" in seen and seen.count("WATCHDOG=1") >= 2, (seen, agent.log)
        ca.unlink()
        assert agent.wait_log("no longer feeding the watchdog", 20), agent.log
        assert "thread mqtt died: FileNotFoundError" in agent.log
        receive(notify_socket, 0.5)
        later = receive(notify_socket, 3.0)
        assert "WATCHDOG=1" not in later, later
        assert agent.stop(15) == 0, "a dead thread does not stall the clean stop"
    finally:
        agent.close()
