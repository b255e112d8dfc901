"""Brokers that say nothing, and brokers that go away, as the operator reads them in the log.

A TCP server that accepts and never answers, and a broker that speaks only MQTT 3.1.1 given
an MQTT 5 CONNECT (amqtt 0.12, a real broker: it waits for the rest of a CONNECT it cannot
parse and never answers), must each give one clear WARNING within two keepalives. A broker
that goes away must be logged with the reason in words, not paho's ``Unspecified error``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker, free_port

KEEPALIVE = 5  # the smallest keepalive the config allows


class SilentServer:
    """Accepts TCP connections on loopback and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)  # read nothing, answer nothing, close nothing

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


AMQTT = Path(sys.executable).parent / "amqtt"


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[int]:
    """amqtt 0.12, an MQTT 3.1.1-only broker, on a free loopback port."""
    if not AMQTT.exists():
        pytest.skip("amqtt is not installed (dev extras)")
    port = free_port()
    conf = tmp_path / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    log = (tmp_path / "amqtt.log").open("wb")
    proc = subprocess.Popen([str(AMQTT), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"amqtt did not start: {(tmp_path / 'amqtt.log').read_text()}")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _warnings(agent: AgentProcess, needle: str) -> list[str]:
    return [line for line in agent.log.splitlines() if " WARNING " in line and needle in line]


def _agent(tmp_path: Path, port: int, protocol: str) -> AgentProcess:
    return AgentProcess(tmp_path, base_config(
        tmp_path, port, mqtt={"keepalive": KEEPALIVE, "protocol": protocol},
        synthetic=[{"id": "s1", "rate": 2}])).start()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_server_that_never_answers_gets_one_clear_warning(
    tmp_path: Path, silent: SilentServer, protocol: str
) -> None:
    agent = _agent(tmp_path, silent.port, protocol)
    try:
        assert agent.wait_log("sent no CONNACK", 2 * KEEPALIVE + 5), agent.log
        # Let it retry for another keepalive or two: still one line, not one per attempt.
        time.sleep(KEEPALIVE + 2)
        lines = _warnings(agent, "CONNACK")
        assert silent.accepted >= 2  # it did retry
    finally:
        assert agent.stop() == 0
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"127.0.0.1:{silent.port} accepted the TCP connection but sent no CONNACK " \
           f"within {KEEPALIVE} s" in line
    assert "retrying in" in line
    if protocol == "5":
        assert "try `mqtt.protocol: 3.1.1`" in line
    else:
        assert "mqtt.protocol" not in line


def test_a_3_1_1_only_broker_given_mqtt_5_says_so_and_3_1_1_connects(
    tmp_path: Path, amqtt_broker: int
) -> None:
    first = tmp_path / "v5"
    first.mkdir()
    agent = _agent(first, amqtt_broker, "5")
    try:
        assert agent.wait_log("CONNACK", 2 * KEEPALIVE + 5), agent.log
        time.sleep(2)
        lines = [x for x in agent.log.splitlines() if "mqtt.protocol: 3.1.1" in x]
        assert "mqtt: connected" not in agent.log
    finally:
        assert agent.stop() == 0
    assert len(lines) == 1 and " WARNING " in lines[0], lines
    # The hint is right: the same broker takes the agent once it speaks 3.1.1.
    second = tmp_path / "v311"
    second.mkdir()
    agent = _agent(second, amqtt_broker, "3.1.1")
    try:
        assert agent.wait_log("mqtt: connected", 20), agent.log
    finally:
        assert agent.stop() == 0
    assert "CONNACK" not in agent.log


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_a_lost_connection_is_logged_with_its_reason_in_words(
    tmp_path: Path, broker: Broker, how: str
) -> None:
    agent = _agent(tmp_path, broker.port, "5")
    try:
        assert agent.wait_log("mqtt: connected", 20), agent.log
        assert broker.proc is not None
        if how == "kill":
            broker.proc.kill()
            broker.proc.wait()
        else:
            broker.stop()
        assert agent.wait_log("lost:", 3 * KEEPALIVE), agent.log
        broker.start()
        deadline = time.monotonic() + 20
        while agent.log.count("mqtt: connected") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent.log.count("mqtt: connected") == 2, agent.log
    finally:
        assert agent.stop() == 0
    line = next(x for x in agent.log.splitlines() if "lost:" in x)
    assert " WARNING " in line and f"connection to 127.0.0.1:{broker.port} lost: " in line
    assert "Unspecified error" not in line
    reason = line.split("lost: ", 1)[1]
    assert any(words in reason for words in (
        "the broker closed the connection", "network error: ", "the broker disconnected",
    )), line


def test_loss_reasons_read_as_words() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from agent.mqtt.link import loss_reason

    def code(name: str) -> ReasonCode:
        return ReasonCode(PacketTypes.DISCONNECT, name)

    assert loss_reason(code("Unspecified error"), False,
                       "failed to receive on socket: [Errno 104] Connection reset by peer",
                       30) == "network error: Connection reset by peer"
    assert loss_reason(code("Keep alive timeout"), False, None, 30) == (
        "no answer from the broker to a keepalive ping within 30 s")
    assert loss_reason(code("Server shutting down"), True, None, 30) == (
        "the broker disconnected the agent: Server shutting down")
    assert loss_reason(code("Unspecified error"), False, None, 30) == (
        "the broker closed the connection")
