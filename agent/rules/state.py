"""Persistence of the rule engine's windows: a journal of per-batch deltas in SQLite.

Why a journal: at tens of thousands of base events a second, rewriting every touched group
after each event costs more than the rules themselves. Instead each ``process_many`` call
appends one row: a small JSON header (the engine's now, the groups it changed, the track
memories it changed) and the base events it admitted, each stored once however many rules
count it. A group that only gained events is written as the sequence numbers it gained
(``+``); a group that formed, finalised or was reset is written whole (``=``). Candidates
that fall out of their window are not written at all: on load they are pruned by the same
rule the engine applies, against the restored now.

When the journal holds much more than the live state, the engine writes a snapshot row (the
whole state) and the rows before it are deleted, in one transaction.

Durability: WAL with ``synchronous=NORMAL``. A commit survives the process crashing; a power
cut can lose the last few commits. That loses window state only (those events then count
towards no composite, and nothing is counted twice): the base events themselves went through
the durable outbox before they reached the rules.

Row layout: ``journal(seq, kind, header, events)``; ``kind`` is ``s`` (snapshot) or ``d``
(delta); ``events`` is the admitted events' JSON, one a line, in the order of ``header.ev``.
Lists of event sequence numbers are packed (``pack_seqs``): JSON lists of integers cost
more to write than everything else in a row.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FILE_NAME = "rules.sqlite3"
FORMAT = 1


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


@dataclass
class LoadedState:
    """What a state directory held, with events still as JSON (parsed only when referenced)."""

    now: int = 0
    next_seq: int = 0
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tracks: dict[tuple[str, str, str], int] = field(default_factory=dict)
    events: dict[int, bytes] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0


def apply_group_delta(groups: dict[tuple[str, str], dict[str, Any]], delta: list[Any]) -> None:
    """Apply one ``[rule_id, group_key, op, value]`` entry of a delta row."""
    rule_id, key, op, value = delta
    if op == "=":
        groups[(rule_id, key)] = value
        return
    state = groups.get((rule_id, key))
    if state is None:
        # Only possible if the full state was lost; start the group from what is known.
        state = groups[(rule_id, key)] = empty_group_state()
    target = "m" if state.get("cid") else "c"
    state[target] = pack_seqs([*unpack_seqs(state[target]), *unpack_seqs(value)])


def empty_group_state() -> dict[str, Any]:
    """The serialised state of a group that holds nothing."""
    return {"cid": None, "st": 0, "nw": 0, "up": 0, "m": "", "c": "", "cd": 0, "sp": ""}


class RuleStore:
    """The journal file in a state directory. Not thread-safe: the engine serialises calls."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / FILE_NAME
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            "seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
            "header TEXT NOT NULL, events BLOB NOT NULL)"
        )
        self.rows_since_snapshot = 0

    def load(self) -> LoadedState:
        """Replay the last snapshot and the deltas after it."""
        state = LoadedState()
        start = self._db.execute("SELECT MAX(seq) FROM journal WHERE kind = 's'").fetchone()[0]
        if start is None:
            return state
        cursor = self._db.execute(
            "SELECT kind, header, events FROM journal WHERE seq >= ? ORDER BY seq", (start,)
        )
        for kind, header_text, blob in cursor:
            header = json.loads(header_text)
            if header.get("format") not in (None, FORMAT):
                raise RuntimeError(
                    f"{self.path}: state format {header.get('format')} is not {FORMAT}; "
                    "move the file away to start with empty windows"
                )
            lines = blob.split(b"\n") if blob else []
            state.events.update(zip(unpack_seqs(header["ev"]), lines, strict=True))
            state.now = max(state.now, header["now"])
            state.next_seq = max(state.next_seq, header["seq"])
            if kind == "s":
                state.rules = header["rules"]
                state.groups = {(g[0], g[1]): g[2] for g in header["g"]}
                state.tracks = {}
                state.pending = header.get("pending", [])
            else:
                if header.get("pd"):
                    state.pending = []
                for delta in header["g"]:
                    apply_group_delta(state.groups, delta)
            for rule_id, source_id, track_id, until in header["t"]:
                state.tracks[(rule_id, source_id, track_id)] = until
            state.rows += 1
        self.rows_since_snapshot = state.rows
        return state

    def append(self, header: dict[str, Any], events: list[bytes], *, snapshot: bool) -> None:
        """Write one row in its own transaction; a snapshot also drops every older row."""
        header = {"format": FORMAT, **header}
        db = self._db
        db.execute("BEGIN")
        try:
            cursor = db.execute(
                "INSERT INTO journal (kind, header, events) VALUES (?, ?, ?)",
                ("s" if snapshot else "d", json.dumps(header, separators=(",", ":")),
                 b"\n".join(events)),
            )
            if snapshot:
                db.execute("DELETE FROM journal WHERE seq < ?", (cursor.lastrowid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.rows_since_snapshot = 1 if snapshot else self.rows_since_snapshot + 1

    def close(self) -> None:
        """Close the database; later calls fail."""
        self._db.close()


__all__ = [
    "FILE_NAME",
    "LoadedState",
    "RuleStore",
    "apply_group_delta",
    "empty_group_state",
    "pack_seqs",
    "unpack_seqs",
]
