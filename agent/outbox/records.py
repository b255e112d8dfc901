"""What the outbox stores and reports: messages, stats, counters, index entries, sizes."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import NamedTuple

DROP_REASONS = ("full_drop_oldest", "full_reject_new", "max_events", "ttl", "too_large",
                "disk_full", "corrupt")
"""Keys of ``OutboxStats.drops``: why a message was dropped or refused.

``disk_full``: refused because the file system had no room even after making room by
``on_full``; ``corrupt``: could not be read back from a damaged ``outbox.db``.
"""


# What one message counts against max_bytes besides its strings and payload: about what its
# row costs SQLite (rowid, header, ts, flags), so tiny messages are not counted as free.
_ROW_OVERHEAD = 24

_DB_ERRORS = (sqlite3.Error, OSError)


@dataclass(frozen=True)
class OutboxMessage:
    """One message to deliver: a relative MQTT topic and its payload."""

    topic: str
    payload: bytes
    stream: str
    kind: str = "event"
    retain: bool = False


@dataclass(frozen=True)
class OutboxStats:
    """What the stats topic reports about the outbox."""

    depth: int
    bytes: int
    oldest_age_s: float | None
    in_flight: int
    enqueued: int
    acked: int
    drops: dict[str, int]
    shed: int
    disk_full: bool = False
    """The file system is below ``min_free_bytes`` or refused a write: the outbox keeps
    within the space left, making room by ``on_full``."""
    set_aside_bytes: int = 0
    """Bytes of corrupt databases kept beside the outbox (counted against ``max_bytes``)."""


class OutboxError(RuntimeError):
    """The outbox cannot read or write its directory; the message names the path and cause."""


class _Meta(NamedTuple):
    """What the index knows about a stored message without reading its row."""

    stream: str
    size: int
    ts: float
    kind: str
    sheddable: bool


@dataclass
class _Counters:
    enqueued: int = 0
    acked: int = 0
    shed: int = 0
    next_key: int = 1
    drops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    def to_json(self) -> str:
        return json.dumps(
            {
                "enqueued": self.enqueued,
                "acked": self.acked,
                "shed": self.shed,
                "next_key": self.next_key,
                "drops": self.drops,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> _Counters:
        raw = json.loads(text)
        counters = cls(
            enqueued=int(raw.get("enqueued", 0)),
            acked=int(raw.get("acked", 0)),
            shed=int(raw.get("shed", 0)),
            next_key=int(raw.get("next_key", 1)),
        )
        for reason, count in dict(raw.get("drops", {})).items():
            counters.drops[str(reason)] = int(count)
        return counters

    def copy(self) -> _Counters:
        return _Counters(self.enqueued, self.acked, self.shed, self.next_key, dict(self.drops))


def _size(kind: str, topic: str, stream: str, payload_size: int) -> int:
    """Bytes a message counts against ``max_bytes``."""
    return (_ROW_OVERHEAD + len(kind.encode()) + len(topic.encode()) + len(stream.encode())
            + payload_size)
