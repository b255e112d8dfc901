"""Statuses and direct publishes: retained state (device, sources), the clean stop."""

from __future__ import annotations

import contextlib
import logging
import queue
import select
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.mqtt.base import _Direct
from agent.mqtt.delivery import Delivery

logger = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
STOPPED = b"stopped"

STOP_FLUSH_S = 1.5
"""How long a stop waits for the broker to acknowledge the final retained statuses."""


class Status(Delivery):
    """Publishes retained statuses and direct messages, and the final ones at a stop (a part
    of ``MqttLink``; after ``Delivery``, whose acknowledgements the stop hands over)."""

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Publish retained state now and again after every reconnect (latest value wins)."""
        with self._retained_lock:
            self._retained[topic] = payload
            self._generation += 1
            self._direct.put(_Direct(topic, payload, 1, True, generation=self._generation))
        self.wake()

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Any = None) -> None:
        """Fire-and-forget publish of a full topic (stats, command results); not persisted.
        ``properties``: MQTT 5 publish properties (e.g. correlation data), or None."""
        if self._config.protocol != "5":
            properties = None
        self._direct.put(_Direct(topic, payload, qos, retain, properties))
        self.wake()

    def _send_direct(self, client: mqtt.Client) -> None:
        while True:
            try:
                item = self._direct.get_nowait()
            except queue.Empty:
                return
            if 0 < item.generation <= self._replayed_up_to:
                continue  # set before the last connect, whose replay sent the latest value
            client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain,
                           properties=item.properties)

    def _clean_stop(self, client: mqtt.Client) -> None:
        """Send the final statuses, say ``stopped``, wait for the broker to take them, leave.

        The sources' last retained statuses (``stopped``) are queued just before the stop;
        they go out before the device's own ``stopped``, and the stop counts as clean only
        when the broker acknowledged all of them (else a consumer would see ``running``).
        """
        if not self.connected:
            self._stopped_offline()
            return
        infos: list[mqtt.MQTTMessageInfo] = []
        while True:
            try:
                item = self._direct.get_nowait()
            except queue.Empty:
                break
            info = client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain,
                                  properties=item.properties)
            if item.retain and item.qos > 0:
                infos.append(info)
        infos.append(client.publish(self.topics.status, STOPPED, qos=1, retain=True))
        end = self._clock.monotonic() + STOP_FLUSH_S
        sock = client.socket()
        while (sock is not None and not all(i.is_published() for i in infos)
               and self._clock.monotonic() < end):
            try:
                r, w, _ = select.select([sock], [sock] if client.want_write() else [], [], 0.1)
            except (OSError, ValueError):
                break
            if r and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if w and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            sock = client.socket()
        self._flush_acks()
        missing = sum(not i.is_published() for i in infos)
        self.clean_stop = missing == 0
        if missing:
            # No DISCONNECT: the broker then publishes the last will, so the device reads
            # offline instead of a stale online.
            logger.warning("mqtt: unclean stop: the broker did not acknowledge %d of the %d "
                           "final retained statuses within %.1f s; they may still show the "
                           "state before the stop (closing without DISCONNECT, so the "
                           "device's status becomes offline)", missing, len(infos),
                           STOP_FLUSH_S)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
            return
        client.disconnect()
        client.loop_write()

    def _stopped_offline(self) -> None:
        self.clean_stop = False
        logger.warning("mqtt: unclean stop: not connected to %s:%d, so the retained statuses "
                       "there still show the state before the outage",
                       self._config.host, self._config.port)
