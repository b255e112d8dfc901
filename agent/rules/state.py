"""Persistence of the rule engine: the admitted input events, plus a snapshot of control state.

Why inputs and not window state: at tens of thousands of base events a second through dozens
of rules, writing what each rule did with each event costs more than the rules themselves.
The engine is deterministic, so it is enough to store each base event that changed some
rule's state once (however many rules count it), with the engine's now when it was
processed, and on start to feed the stored events through the engine again (*replay*).

What replay cannot recover from the events after it starts is kept in a **snapshot**, a small
JSON document written every few tens of thousands of events and on every control call
(``set_enabled``, ``reload``, start): the rules in force, every group's candidates and open
members (as event sequence numbers), composite ids, cooldowns, track memory, which rules
already counted each live event id, and the engine's now. Replay starts from the snapshot and
feeds the events stored after it. Composite ids are derived from a per-file seed, the rule,
the group and the event that formed the composite, so a composite formed again by replay
keeps the id it was published with.

Tables: ``meta(key, value)`` (``format``, ``seed``, ``now`` of the last commit, ``pending``:
final composites owed or handed out and not received yet, each as its header without the
member lists plus its members' sequence numbers, ``snapshot``); ``events(seq, now, t, started,
ended, device, source, label, body)``: one row per stored event, times in ms, the device,
source and label as references into ``parts`` (each distinct one stored once), the rest as the
event's JSON without those fields (pydantic's serializer; the timestamps are what makes a full
``to_json`` slow). Each engine call is one transaction. When a snapshot is written, events
that no group refers to any more are deleted in the same transaction, so the file holds the
live windows and the events since the last snapshot.

Durability: WAL with ``synchronous=NORMAL``. A commit survives the process crashing; a power
cut can lose the last few commits. That loses window state only (those events then count
towards no composite, and nothing is counted twice): the base events themselves went through
the durable outbox before they reached the rules.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import sys
import uuid
from array import array
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.events.schema import DeviceRef, Event, Label, SourceRef, new_event_id
from agent.fsmodes import private_dir, private_file

logger = logging.getLogger(__name__)

FILE_NAME = "rules.sqlite3"
FORMAT = 2

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
# Stored in their own columns; everything else goes into ``body``.
_SEPARATE = {"timestamp", "started_at", "ended_at", "device", "source", "label"}
_serializer = Event.__pydantic_serializer__
_PART_TYPES: dict[str, type[BaseModel]] = {"d": DeviceRef, "s": SourceRef, "l": Label}

StoredEvent = tuple[int, int, Event]
"""An event to store: (sequence number, the engine's now when processed, the event)."""


def pack_seqs(seqs: Iterable[int]) -> str:
    """Event sequence numbers as base64 of little-endian int64s: a tenth of the JSON cost."""
    packed = array("q", seqs)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def unpack_seqs(text: str) -> list[int]:
    """The inverse of ``pack_seqs``."""
    packed = array("q")
    packed.frombytes(base64.b64decode(text))
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tolist()


def pack_ids(ids: Iterable[str]) -> str:
    """Event ids (UUID strings) as base64 of their 16 bytes each."""
    return base64.b64encode(b"".join(uuid.UUID(i).bytes for i in ids)).decode("ascii")


def unpack_ids(text: str) -> list[str]:
    """The inverse of ``pack_ids`` (ids come back in their canonical form)."""
    raw = base64.b64decode(text)
    return [str(uuid.UUID(bytes=raw[i:i + 16])) for i in range(0, len(raw), 16)]


def _utc(ms: int | None) -> datetime | None:
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


@dataclass
class LoadedState:
    """What a state directory held. ``rows`` are the stored events, in sequence order, still
    encoded (``RuleStore.decode`` turns one into an event)."""

    seed: str = ""
    now: int = 0
    snapshot: dict[str, Any] | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)


class RuleStore:
    """The state file in a state directory. Not thread-safe: the engine serialises calls."""

    def __init__(self, state_dir: Path) -> None:
        private_dir(state_dir)  # 0700 / 0600 whatever the umask: open windows hold events
        self.path = state_dir / FILE_NAME
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            private_file(state_dir / (FILE_NAME + suffix), create=False)
        db = self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone():
            raise RuntimeError(
                f"{self.path}: state format 1 is not {FORMAT}; "
                "move the file away to start with empty windows"
            )
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS parts (ref INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
            "body BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, now INTEGER NOT NULL, "
            "t INTEGER NOT NULL, started INTEGER, ended INTEGER, device INTEGER NOT NULL, "
            "source INTEGER NOT NULL, label INTEGER, body BLOB NOT NULL)"
        )
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format", str(FORMAT)) != str(FORMAT):
            raise RuntimeError(
                f"{self.path}: state format {meta['format']} is not {FORMAT}; "
                "move the file away to start with empty windows"
            )
        self.seed: str = meta.get("seed") or new_event_id()
        if "seed" not in meta:
            db.execute("INSERT INTO meta VALUES ('format', ?), ('seed', ?)",
                       (str(FORMAT), self.seed))
        # Parts (devices, sources, labels): by object identity first (events share them), by
        # content when a new object turns up.
        self._part_by_id: dict[int, tuple[object, int]] = {}
        self._part_by_body: dict[tuple[str, bytes], int] = {}
        self._part_models: dict[int, BaseModel] = {}
        self._new_parts: list[tuple[int, str, bytes]] = []
        self._last_parts: tuple[Any, Any, Any, tuple[int, int, int | None]] = (
            None, None, None, (0, 0, None))
        self._next_part = 1
        for ref, kind, body in db.execute("SELECT ref, kind, body FROM parts"):
            self._part_by_body[(kind, bytes(body))] = ref
            self._part_models[ref] = _PART_TYPES[kind].model_validate_json(body)
            self._next_part = max(self._next_part, ref + 1)
        self._seqs: list[int] = []  # sequence numbers of the stored events, ascending
        self._written_now = int(meta.get("now", 0))

    # ------------------------------------------------------------------------- reading

    def load(self) -> LoadedState:
        """The snapshot, the last committed now, pending composites and the stored events."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        rows = self._db.execute(
            "SELECT seq, now, t, started, ended, device, source, label, body FROM events "
            "ORDER BY seq"
        ).fetchall()
        self._seqs = [row[0] for row in rows]
        snapshot = json.loads(meta["snapshot"]) if "snapshot" in meta else None
        return LoadedState(
            seed=self.seed,
            now=int(meta.get("now", 0)),
            snapshot=snapshot,
            pending=json.loads(meta.get("pending", "[]")),
            rows=rows,
        )

    def decode(self, row: tuple[Any, ...]) -> Event:
        """One stored event row as the event."""
        _seq, _now, t, started, ended, device, source, label, body = row
        data = json.loads(body)
        data["timestamp"] = _utc(t)
        data["started_at"] = _utc(started)
        data["ended_at"] = _utc(ended)
        data["device"] = self._part_models[device]
        data["source"] = self._part_models[source]
        data["label"] = None if label is None else self._part_models[label]
        return Event.model_validate(data)

    # ------------------------------------------------------------------------- writing

    def _part(self, kind: str, model: BaseModel) -> int:
        known = self._part_by_id.get(id(model))
        if known is not None and known[0] is model:
            return known[1]
        body = model.model_dump_json().encode()
        ref = self._part_by_body.get((kind, body))
        if ref is None:
            ref = self._part_by_body[(kind, body)] = self._next_part
            self._next_part += 1
            self._part_models[ref] = model
            self._new_parts.append((ref, kind, body))
        if len(self._part_by_id) > 4096:  # objects built per event: keep the cache bounded
            self._part_by_id.clear()
        self._part_by_id[id(model)] = (model, ref)
        return ref

    def _encode(self, stored: StoredEvent) -> tuple[Any, ...]:
        seq, now, event = stored
        d = event.__dict__
        device, source, label = d["device"], d["source"], d["label"]
        # Events share their device, source and label objects: the same three as last time
        # cost one comparison each.
        last = self._last_parts
        if device is last[0] and source is last[1] and label is last[2]:
            refs = last[3]
        else:
            refs = (self._part("d", device), self._part("s", source),
                    None if label is None else self._part("l", label))
            self._last_parts = (device, source, label, refs)
        started, ended = d["started_at"], d["ended_at"]
        return (
            seq, now, (d["timestamp"] - _EPOCH) // _ONE_MS,
            None if started is None else (started - _EPOCH) // _ONE_MS,
            None if ended is None else (ended - _EPOCH) // _ONE_MS,
            *refs,
            _serializer.to_json(event, exclude=_SEPARATE),
        )

    def commit(
        self,
        events: Sequence[StoredEvent],
        now: int,
        *,
        pending: str | None = None,
        snapshot: dict[str, Any] | None = None,
        keep: Collection[int] = (),
    ) -> None:
        """Store ``events`` and ``now`` in one transaction; ``pending`` (a JSON array, when
        given) replaces the composites owed or not yet received; a ``snapshot`` replaces the
        last one, and then every stored event not in ``keep`` is deleted."""
        if not events and snapshot is None and pending is None and now == self._written_now:
            return
        rows = [self._encode(e) for e in events]
        db = self._db
        db.execute("BEGIN")
        try:
            if self._new_parts:
                db.executemany("INSERT INTO parts VALUES (?, ?, ?)", self._new_parts)
            if rows:
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if now != self._written_now:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('now', ?)", (str(now),))
            if pending is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('pending', ?)", (pending,))
            if snapshot is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot', ?)",
                           (json.dumps(snapshot, separators=(",", ":")),))
                db.executemany("DELETE FROM events WHERE seq BETWEEN ? AND ?",
                               _runs((*self._seqs, *(e[0] for e in events)), keep))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._new_parts = []
        self._written_now = now
        if snapshot is not None:
            self._seqs = sorted(s for s in (*self._seqs, *(e[0] for e in events)) if s in keep)
        else:
            self._seqs.extend(e[0] for e in events)

    def close(self) -> None:
        """Close the database; later calls fail."""
        self._db.close()


def _runs(seqs: Iterable[int], keep: Collection[int]) -> list[tuple[int, int]]:
    """The numbers of ``seqs`` (every stored one, ascending) not in ``keep``, as ranges."""
    runs: list[tuple[int, int]] = []
    start = prev = -1
    for seq in seqs:
        if seq in keep:
            if start >= 0:
                runs.append((start, prev))
                start = -1
        else:
            if start < 0:
                start = seq
            prev = seq
    if start >= 0:
        runs.append((start, prev))
    return runs


__all__ = [
    "FILE_NAME",
    "LoadedState",
    "RuleStore",
    "StoredEvent",
    "pack_ids",
    "pack_seqs",
    "unpack_ids",
    "unpack_seqs",
]
