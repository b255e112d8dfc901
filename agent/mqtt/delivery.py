"""Delivery from the outbox: publish, gather PUBACKs, remove acknowledged messages."""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.base import LinkBase
from agent.outbox.store import OutboxError

logger = logging.getLogger(__name__)

# Acknowledged keys are gathered for up to this long (seconds) and removed in one commit.
# During a backlog drain that is a commit per ~100 messages instead of per ~20, which frees
# the CPU the drain needs; the price is that after a kill -9 the messages acknowledged in
# those last milliseconds are sent again, like those in flight (same ids).
ACK_GATHER_S = 0.005
# ... but no more keys than this in one commit.
ACK_GATHER_MAX = 1000


class Delivery(LinkBase):
    """At-least-once delivery of the outbox's messages (a part of ``MqttLink``)."""

    def _outbox_room_blocked(self) -> bool:
        return len(self._inflight) >= self._config.max_inflight

    def _outbox_has_work(self) -> bool:
        # Cheap check; wait(0) returns at once either way.
        return self._outbox.wait(0)

    def _deliver(self, client: mqtt.Client) -> None:
        room = self._config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        batch = self._outbox.claim(room)
        for i, (key, message) in enumerate(batch):
            info = client.publish(self.topics.full(message.topic), message.payload,
                                  qos=self._config.qos, retain=message.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._outbox.release([k for k, _ in batch[i:]])
                return
            if self._config.qos == 0:
                self._acked.append(key)
            else:
                self._inflight[info.mid] = key
        self._flush_acks()

    def _flush_acks(self) -> None:
        """Hand acknowledged (or broker-rejected) keys to the acknowledgement thread."""
        batch = self._acked + self._rejected
        if not batch:
            return
        self.delivered += len(self._acked)
        self._acked, self._rejected = [], []
        with self._ack_lock:
            if not self._ack_pending:
                self._ack_last = self._clock.monotonic()
            self._ack_pending += 1
        self._ack_queue.put(batch)

    def _ack_loop(self) -> None:
        """Remove acknowledged messages from the outbox, many batches per transaction."""
        stopping = False
        while not stopping:
            item = self._ack_queue.get()
            if item is None:
                break
            batch, taken = list(item), 1
            end = time.monotonic() + ACK_GATHER_S  # real time: this is a queue timeout
            while len(batch) < ACK_GATHER_MAX:
                try:
                    more = self._ack_queue.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.extend(more)
                taken += 1
            try:
                self._outbox.ack(batch)
            except OutboxError as exc:
                # Not lost: they stay in the outbox and are sent again (duplicates, by id).
                logger.error("mqtt: cannot remove %d delivered messages from the outbox: %s",
                             len(batch), exc)
            with self._ack_lock:
                self._ack_pending -= taken
                self._ack_last = self._clock.monotonic()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Any = None) -> None:
        key = self._inflight.pop(mid, None)
        if key is None:
            return  # a direct publish (status, stats): nothing to acknowledge
        if reason_code.is_failure:
            # The broker will never take it (e.g. not authorised for this topic): retrying
            # would block the queue forever, so it is removed and counted.
            self.broker_rejected += 1
            logger.error("mqtt: broker rejected a message: %s (counted as broker_rejected)",
                         reason_code)
            self._rejected.append(key)
        else:
            self._acked.append(key)
