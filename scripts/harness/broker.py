"""A real Mosquitto broker on a free loopback port, and a recording subscriber, for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One mosquitto process; ``stop()`` and ``start()`` keep the same port."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "",
                 persistent: bool = False) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # Persistence keeps subscribers' sessions across a broker restart, so an outage test
        # measures the agent, not the gap in the test's own subscription.
        persistence = (f"persistence true\npersistence_location {workdir}/\n" if persistent
                       else "persistence false\n")
        anon = "" if "allow_anonymous" in extra_conf else "allow_anonymous true\n"
        # Started as root, mosquitto drops to user "mosquitto", which cannot read pytest's
        # private temporary directories (password files, persistence).
        if os.geteuid() == 0:
            anon += "user root\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{persistence}"
            f"{anon}log_dest file {self.log}\nlog_type error\nlog_type warning\n"
            f"max_inflight_messages 0\nmax_queued_messages 0\n{extra_conf}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    log = self.log.read_text() if self.log.exists() else "(no log)"
                    raise RuntimeError(f"mosquitto exited: {log}") from None
                time.sleep(0.01)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Recorder:
    """A subscriber that records every message it gets, thread-safely."""

    broker: Broker
    topics: list[str]
    client_id: str = ""
    # False: a persistent session the broker kept is not subscribed again, so what arrives
    # is what was published, without the retained copies a new subscription brings.
    resubscribe: bool = True
    messages: list[Received] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    cond: threading.Condition = field(init=False)
    client: mqtt.Client = field(init=False)

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)
        # With a client id the session is persistent: the broker queues what arrives while
        # this subscriber is reconnecting.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311, clean_session=not self.client_id)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self._pending: set[int] = set()
        self._connected = threading.Event()
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        # Subscribed, not only connected: a test that stops the broker or starts an agent
        # right after this must not race the broker's handling of the SUBSCRIBEs.
        if not self._connected.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props=None):  # type: ignore[no-untyped-def]
        if self.resubscribe or not flags.session_present:
            with self.lock:
                for t in self.topics:
                    self._pending.add(client.subscribe(t, qos=1)[1])
        if not self._pending:
            self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, props=None):  # type: ignore[no-untyped-def]
        with self.lock:
            self._pending.discard(mid)
            if not self._pending:
                self._connected.set()

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        with self.cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10) -> bool:
        """Wait until ``predicate(messages)`` holds; returns whether it did."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def on(self, prefix: str) -> list[Received]:
        """Messages whose topic starts with ``prefix``."""
        with self.lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
