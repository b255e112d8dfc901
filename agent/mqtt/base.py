"""The state shared by the parts of the MQTT link, and waking its network thread."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from agent.mqtt.config import MqttConfig
from agent.mqtt.topics import Topics
from agent.outbox.store import Outbox


@dataclass
class _Direct:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any = None
    # For retained state: its place in the order of ``set_retained`` calls (0: not state).
    generation: int = 0


class LinkBase:
    """What every part of ``MqttLink`` shares: the state (declared here for the type checker,
    set in ``MqttLink.__init__``), whether it is connected, and waking its network thread."""

    _config: MqttConfig
    _outbox: Outbox
    _clock: Clock
    topics: Topics
    _wake_w: socket.socket
    _direct: queue.SimpleQueue[_Direct]
    _retained: dict[str, bytes]
    _generation: int  # set_retained calls so far (under _retained_lock)
    _replayed_up_to: int  # the generation the last connect's replay covered
    _retained_lock: threading.Lock
    _connected: threading.Event
    _inflight: dict[int, int]
    _acked: list[int]
    _rejected: list[int]
    _ack_queue: queue.SimpleQueue[list[int] | None]
    _ack_pending: int
    _ack_lock: threading.Lock
    _ack_last: float
    clean_stop: bool | None
    delivered: int
    broker_rejected: int

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wake(self) -> None:
        """Interrupt the network thread's select (new outbox data, queued publishes)."""
        # A full pipe means the loop is awake anyway.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")
