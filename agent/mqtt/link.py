"""The connection to the broker: delivery from the outbox, availability, direct publishes.

One thread owns the paho client and drives it through paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc`` around our own ``select``). Other threads never
touch the client: they queue work and wake the loop through a socket pair. This keeps paho's
packet writes single-threaded and lets us reconnect with our own backoff and jitter.

Delivery is at-least-once: a message leaves the outbox only when its PUBACK arrives. What was
in flight when the connection dropped is released back to the outbox and sent again, in
order, after the next connect (so only never-acknowledged messages can be duplicated).

This module keeps the connection (connect, reconnect, the network loop, paho's callbacks);
``MqttLink``'s other jobs are mixins beside it, over the state declared in
``agent.mqtt.base``: ``delivery`` (from the outbox, PUBACKs, acknowledgements) and ``status``
(retained statuses, direct publishes, the clean stop). Making clients, backoff and the
wording of connection errors are in ``agent.mqtt.connect``, topic names in
``agent.mqtt.topics``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.clock import Clock, SystemClock
from agent.mqtt.base import _Direct
from agent.mqtt.config import MqttConfig
from agent.mqtt.connect import (
    _PahoErrors,
    backoff_delay,
    describe_connect_error,
    loss_reason,
    paho_client,
)
from agent.mqtt.delivery import ACK_GATHER_MAX, ACK_GATHER_S
from agent.mqtt.status import OFFLINE, ONLINE, STOP_FLUSH_S, STOPPED, Status
from agent.mqtt.topics import Topics
from agent.outbox.store import Outbox

logger = logging.getLogger(__name__)

MessageHandler = Callable[..., None]
"""``handler(topic, payload)``, or ``handler(topic, payload, properties)`` when subscribed
``with_properties`` (the MQTT 5 properties, e.g. response topic; None under 3.1.1)."""

CONNACK_MAX_S = 30.0
"""Longest wait for the broker's CONNACK (the keepalive, when shorter) before giving up."""


class MqttLink(Status):
    """Owns the broker connection for the agent's whole life."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        outbox: Outbox,
        password: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._password = password
        self._clock = clock or SystemClock()
        self.topics = Topics(config.topic_prefix, device_id)
        self.client_id = config.client_id or f"edge-agent-{device_id}"
        self._rng = random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._direct: queue.SimpleQueue[_Direct] = queue.SimpleQueue()
        self._retained: dict[str, bytes] = {}
        self._generation = 0
        self._replayed_up_to = 0
        self._retained_lock = threading.Lock()
        self._handlers: dict[str, tuple[MessageHandler, bool, bool]] = {}
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._inflight: dict[int, int] = {}
        self._acked: list[int] = []
        self._rejected: list[int] = []
        # Acknowledged keys are removed from the outbox on their own thread: SQLite (and its
        # fsync under durability: full) then overlaps with publishing instead of stalling it.
        self._ack_queue: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        self._ack_thread: threading.Thread | None = None
        self._ack_pending = 0
        self._ack_lock = threading.Lock()
        self._ack_last = self._clock.monotonic()
        self._last_beat = self._clock.monotonic()
        self._connack_seen = False
        self._paho_errors = _PahoErrors()
        self.last_error: str | None = None
        self.clean_stop: bool | None = None
        """After ``stop``: whether the final retained statuses reached the broker."""
        self.connects = 0
        self.disconnects = 0
        self.delivered = 0
        self.broker_rejected = 0


    # -- public API, safe from any thread -------------------------------------------------

    def start(self) -> None:
        """Start the network thread; it connects and keeps reconnecting until ``stop``."""
        self._ack_thread = threading.Thread(target=self._ack_loop, name="mqtt-ack", daemon=True)
        self._ack_thread.start()
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish ``stopped`` (retained), disconnect cleanly and join the thread."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("mqtt: network thread did not stop within %.1f s", timeout)
        if self._ack_thread is not None:
            self._ack_queue.put(None)  # after every batch already handed over
            self._ack_thread.join(timeout)
            if self._ack_thread.is_alive():
                logger.warning("mqtt: acknowledgement thread did not stop within %.1f s",
                               timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter: str, handler: MessageHandler,
                  accept_retained: bool = True, with_properties: bool = False) -> None:
        """Route messages matching ``topic_filter`` to ``handler(topic, payload)``.

        The handler runs on the network thread: keep it short and never let it raise.
        ``accept_retained=False`` drops retained messages: a command published with retain
        would otherwise run again after every reconnect.
        """
        self._handlers[topic_filter] = (handler, accept_retained, with_properties)
        self.wake()

    @property
    def alive(self) -> bool:
        """Both threads (network, acknowledgements) are running; False before ``start``."""
        return all(t is not None and t.is_alive() for t in (self._thread, self._ack_thread))

    def heartbeat_age(self) -> float:
        """Seconds since the network loop last went round (for the watchdog)."""
        if self._thread is None or not self._thread.is_alive():
            return 0.0
        now = self._clock.monotonic()
        age = now - self._last_beat
        with self._ack_lock:
            if self._ack_pending:  # a stuck outbox write is a hang too
                age = max(age, now - self._ack_last)
        return age

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "delivered": self.delivered,
            "in_flight": len(self._inflight),
            "broker_rejected": self.broker_rejected,
            "last_error": self.last_error,
        }


    # -- network thread -------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        client = paho_client(self._config, self.client_id, self._password)
        client.max_inflight_messages_set(self._config.max_inflight)
        client.max_queued_messages_set(0)
        client.will_set(self.topics.status, OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._paho_errors.last = None
        client.enable_logger(self._paho_errors)
        return client

    def _run(self) -> None:
        attempt = 0
        last_logged: str | None = None
        while not self._stop.is_set():
            self._beat()
            client = self._new_client()
            self._client = client
            try:
                if self._config.protocol == "5":
                    client.connect(self._config.host, self._config.port, self._config.keepalive,
                                   clean_start=True)
                else:
                    client.connect(self._config.host, self._config.port, self._config.keepalive)
            except (OSError, ValueError) as exc:
                reason = describe_connect_error(exc)
                self.last_error = reason
                delay = backoff_delay(attempt, self._config.reconnect_min_s,
                                      self._config.reconnect_max_s, self._rng)
                if reason != last_logged or attempt % 20 == 0:
                    logger.warning("mqtt: cannot connect to %s:%d: %s; retrying in %.1f s",
                                   self._config.host, self._config.port, reason, delay)
                    last_logged = reason
                attempt += 1
                self._sleep(delay)
                continue
            self._connack_seen = False
            failure = self._serve(client)
            was_connected = self.connected
            self._lost(client)
            if self._stop.is_set():
                break
            if was_connected:
                attempt = 0
                last_logged = None
            delay = backoff_delay(attempt, self._config.reconnect_min_s,
                                  self._config.reconnect_max_s, self._rng)
            if failure is not None:
                self.last_error = failure
                # Once per kind of failure (and every 20th try): a silent broker retried
                # every few seconds must not fill the log.
                if failure != last_logged or attempt % 20 == 0:
                    logger.warning("mqtt: %s:%d %s; retrying in %.1f s", self._config.host,
                                   self._config.port, failure, delay)
                    last_logged = failure
            attempt += 1
            self._sleep(delay)
        if self.clean_stop is None:  # stopped while not connected
            self._stopped_offline()
        self._client = None

    def _sleep(self, seconds: float) -> None:
        """Wait, but wake for stop; keep beating so a backoff is not a hang."""
        end = self._clock.monotonic() + seconds
        while not self._stop.is_set():
            left = end - self._clock.monotonic()
            if left <= 0:
                return
            self._beat()
            self._stop.wait(min(left, 1.0))

    def _beat(self) -> None:
        self._last_beat = self._clock.monotonic()

    def connack_timeout(self) -> float:
        """Seconds to wait for CONNACK: the keepalive, at most ``CONNACK_MAX_S``."""
        return min(float(self._config.keepalive), CONNACK_MAX_S)

    def _no_connack(self, waited: float | None) -> str:
        """What to tell the operator when the broker never answered our CONNECT."""
        if waited is None:
            what = "closed the connection without answering the MQTT CONNECT"
        else:
            what = f"accepted the TCP connection but sent no CONNACK within {waited:.0f} s"
        if self._config.protocol == "5":
            hint = ("a broker that speaks only MQTT 3.1.1 ignores an MQTT 5 CONNECT: "
                    "try `mqtt.protocol: 3.1.1`")
        else:
            hint = "is it an MQTT broker, and does it expect TLS (`mqtt.tls.enabled`)?"
        return f"{what} ({hint})"

    def _serve(self, client: mqtt.Client) -> str | None:
        """Run one connection until it drops or we are asked to stop.

        Returns why the connection never got going (no CONNACK), or None.
        """
        started = self._clock.monotonic()
        bound = self.connack_timeout()
        peer_closed = False
        sock = client.socket()
        while sock is not None:
            self._beat()
            if self._stop.is_set():
                self._clean_stop(client)
                return None
            if not self._connack_seen and self._clock.monotonic() - started > bound:
                return self._no_connack(bound)
            if self.connected:
                self._send_direct(client)
                self._deliver(client)
            rlist = [sock, self._wake_r]
            wlist = [sock] if client.want_write() else []
            timeout = 1.0
            if self.connected and not self._outbox_room_blocked() and self._outbox_has_work():
                timeout = 0.0
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                return None
            if self._wake_r in readable:
                self._drain_wake()
            if sock in readable and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                peer_closed = True
                break
            if sock in writable and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                peer_closed = True
                break
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._flush_acks()
            sock = client.socket()
        if self._connack_seen or self._stop.is_set():
            return None
        # Not closed by the peer: paho gave up on a silent one after a keepalive.
        return self._no_connack(None if peer_closed else self._clock.monotonic() - started)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _lost(self, client: mqtt.Client) -> None:
        """Forget the connection; unacknowledged messages go back to the outbox."""
        if self._inflight:
            self._outbox.release(sorted(self._inflight.values()))
            self._inflight.clear()
        self._flush_acks()
        if self.connected:
            self.disconnects += 1
        self._connected.clear()
        with contextlib.suppress(Exception):  # the socket may already be gone
            client.disconnect()


    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: ReasonCode, properties: Any = None) -> None:
        if reason_code.is_failure:
            self._connack_seen = True  # answered, with a refusal: logged here, not as silence
            self.last_error = f"broker refused the connection: {reason_code}"
            logger.error("mqtt: %s:%d refused the connection: %s", self._config.host,
                         self._config.port, reason_code)
            client.disconnect()
            return
        self._connack_seen = True
        self.connects += 1
        self.last_error = None
        logger.info("mqtt: connected to %s:%d as %s", self._config.host, self._config.port,
                    self.client_id)
        # Subscribe before saying online: the broker handles this connection's packets in
        # order, so whoever sees `online` can send a command and it is not lost.
        for topic_filter in self._handlers:
            client.subscribe(topic_filter, qos=1)
        client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        with self._retained_lock:
            retained = dict(self._retained)
            # What was set until now is in this replay: ``_send_direct`` skips the copies
            # still queued, instead of sending each retained message twice.
            self._replayed_up_to = self._generation
        for topic, payload in retained.items():
            client.publish(topic, payload, qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: ReasonCode, properties: Any = None) -> None:
        if self.connected and not self._stop.is_set():
            from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            reason = loss_reason(reason_code, from_broker, self._paho_errors.last,
                                 self._config.keepalive)
            logger.warning("mqtt: connection to %s:%d lost: %s; reconnecting",
                           self._config.host, self._config.port, reason)
            self.last_error = f"connection lost: {reason}"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        for topic_filter, (handler, accept_retained, with_props) in self._handlers.items():
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                if message.retain and not accept_retained:
                    logger.warning("mqtt: ignoring retained message on %s (publish commands "
                                   "without retain; clear it with an empty retained message)",
                                   message.topic)
                    continue
                try:
                    if with_props:
                        handler(message.topic, message.payload,
                                getattr(message, "properties", None))
                    else:
                        handler(message.topic, message.payload)
                except Exception:
                    logger.exception("mqtt: handler for %s failed", message.topic)


__all__ = [
    "ACK_GATHER_MAX",
    "ACK_GATHER_S",
    "CONNACK_MAX_S",
    "OFFLINE",
    "ONLINE",
    "STOPPED",
    "STOP_FLUSH_S",
    "MessageHandler",
    "MqttLink",
    "Topics",
    "backoff_delay",
    "describe_connect_error",
    "loss_reason",
    "paho_client",
]
