"""The in-memory index of stored messages: ready queues per stream, recent payloads."""

from __future__ import annotations

import contextlib
import logging
from bisect import insort
from collections import deque
from collections.abc import Iterator

from agent.outbox.base import OutboxBase
from agent.outbox.records import _DB_ERRORS, OutboxMessage, _Meta

logger = logging.getLogger(__name__)

# Payloads kept in memory after put so that live delivery does not read them back.
_RECENT_BYTES = 8 * 1024 * 1024


class Index(OutboxBase):
    """Which messages are stored, ready, claimed or in memory (a part of ``Outbox``)."""

    def _index(self, key: int, stream: str, kind: str, size: int, ts: float, sheddable: bool
               ) -> None:
        self._meta[key] = _Meta(stream, size, ts, kind, sheddable)
        self._bytes += size
        if sheddable and self._config.on_full == "shed_images":
            self._sheddable.append(key)
            # Acked and dropped keys leave from the front, so this stays as long as the queue.
            head = self._sheddable
            while head[0] not in self._meta:
                head.popleft()
        self._make_ready(stream, key)

    def _make_ready(self, stream: str, key: int) -> None:
        ready = self._ready.get(stream)
        if ready is None:
            ready = self._ready[stream] = deque()
            self._rr[stream] = None
        if not ready or key > ready[-1]:
            ready.append(key)
        elif key < ready[0]:
            ready.appendleft(key)
        else:
            insort(ready, key)

    def _forget(self, key: int) -> _Meta | None:
        """Remove a message from every in-memory structure (after its row is gone)."""
        meta = self._meta.pop(key, None)
        if meta is None:
            return None
        self._bytes -= meta.size
        if key in self._claimed:
            self._claimed.discard(key)
        else:
            ready = self._ready.get(meta.stream)
            if ready:
                if ready[0] == key:
                    ready.popleft()
                else:
                    with contextlib.suppress(ValueError):
                        ready.remove(key)
                if not ready:
                    del self._ready[meta.stream]
                    del self._rr[meta.stream]
        recent = self._recent.pop(key, None)
        if recent is not None:
            self._recent_bytes -= len(recent.payload)
        return meta

    def _remember(self, key: int, message: OutboxMessage) -> None:
        size = len(message.payload)
        if size > _RECENT_BYTES // 4:
            return
        self._recent[key] = message
        self._recent_bytes += size
        while self._recent_bytes > _RECENT_BYTES:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old.payload)

    def _oldest_first(self, skip: set[int]) -> Iterator[int]:
        """Keys oldest first: those not in flight, then those in flight."""
        for key in self._meta:
            if key not in self._claimed and key not in skip:
                yield key
        for key in sorted(self._claimed):
            if key not in skip and key not in self._acking and key not in self._ack_pending:
                yield key

    def _read(self, keys: list[int]) -> dict[int, OutboxMessage]:
        """Messages from the database (those no longer in memory), in one query."""
        try:
            found = self._db.messages(keys)
        except _DB_ERRORS as exc:
            raise self._error("read", exc) from exc
        out: dict[int, OutboxMessage] = {}
        for key in keys:
            row = found.get(key)
            if row is None:
                logger.error("outbox %s: message %d has no row; forgetting it", self._path, key)
                meta = self._meta.pop(key, None)
                if meta is not None:
                    self._bytes -= meta.size
                continue
            topic, payload, stream, kind, retain = row
            out[key] = OutboxMessage(topic, payload, stream, kind, retain)
        return out
