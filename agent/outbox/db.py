"""The outbox's SQLite file: one table of messages and one of counters, nothing else.

A message costs one row and one page write per commit: no secondary index, no trigger.
(diskcache, which the outbox used before, keeps a key index, an expiry index and two
triggers that count rows; those cost about four page writes per commit and held the outbox
to about a fifth of raw SQLite's rate.) The metadata columns come before the payload so
that opening a large backlog reads only the first page of each row.

There are two connections. The writer is shared between threads and callers serialise its
use. ``messages()`` goes through a read-only connection of its own: in WAL mode a reader is
never blocked by a writer, so delivery can read a backlog while acknowledged messages are
being deleted and committed (an fsync under ``durability: full``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

FILE_NAME = "outbox.db"
SCHEMA_VERSION = 1
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
_COUNTERS = "counters"
# After a checkpoint the WAL file is cut back to this size: a burst does not leave a large
# -wal file on the card for the rest of the run.
_WAL_LIMIT = 4 * 1024 * 1024
# Page cache per connection (negative: KiB). Rows are read about once, so a small one does.
_CACHE_KIB = -2048
# SQLite's default limit on bound parameters in one statement is 32766; stay well under.
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    retain INTEGER NOT NULL,
    sheddable INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def maybe_sheddable(kind: str, payload: bytes) -> bool:
    """The ``sheddable`` column: a media message, or an event that may carry inline media.

    A cheap test at put time; the JSON is parsed only when space is actually needed.
    """
    return kind == "media" or (kind == "event" and b'"data"' in payload)


class StoredRow(NamedTuple):
    """A message row without its payload, as read when the outbox opens."""

    key: int
    ts: float
    stream: str
    kind: str
    topic: str
    sheddable: bool
    payload_size: int


class NewRow(NamedTuple):
    """A message row to insert."""

    key: int
    ts: float
    stream: str
    kind: str
    topic: str
    retain: bool
    sheddable: bool
    payload: bytes


class OutboxDb:
    """The SQLite database of one outbox directory, in WAL mode."""

    def __init__(self, directory: Path, durability: str) -> None:
        self.path = directory / FILE_NAME
        # Autocommit: a lone INSERT or DELETE is its own transaction (one round trip, not
        # three); several statements go inside ``transaction()``.
        self._con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                    timeout=10)
        reader = None
        try:
            self._setup(durability)
            reader = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True,
                                     isolation_level=None, check_same_thread=False, timeout=10)
            reader.execute(f"PRAGMA cache_size={_CACHE_KIB}")
        except BaseException:
            if reader is not None:
                reader.close()
            self._con.close()
            raise
        self._reader = reader

    def _setup(self, durability: str) -> None:
        con = self._con
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode is {mode})")
        con.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
        con.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
        con.execute(f"PRAGMA cache_size={_CACHE_KIB}")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"written by a newer edge-agent (schema {version}, this one knows "
                f"{SCHEMA_VERSION})"
            )
        with self.transaction():
            # One statement at a time: executescript() would commit on its own.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- reading ------------------------------------------------------------------------

    def rows(self) -> Iterator[StoredRow]:
        """Every message without its payload, oldest first."""
        # length() of a BLOB comes from the row header: the payload's pages are not read.
        cursor = self._con.execute(
            "SELECT id, ts, stream, kind, topic, sheddable, length(payload) "
            "FROM messages ORDER BY id"
        )
        for row in cursor:
            yield StoredRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])

    def messages(self, keys: Sequence[int]) -> dict[int, tuple[str, bytes, str, str, bool]]:
        """(topic, payload, stream, kind, retain) of those ``keys`` that exist.

        Uses the read-only connection: one thread at a time, but alongside the writer.
        """
        out: dict[int, tuple[str, bytes, str, str, bool]] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, topic, payload, stream, kind, retain in self._reader.execute(
                "SELECT id, topic, payload, stream, kind, retain FROM messages "
                f"WHERE id IN ({marks})", chunk
            ):
                out[key] = (topic, bytes(payload), stream, kind, bool(retain))
        return out

    def counters(self) -> str | None:
        """The counters' JSON text, None in a new database."""
        row = self._con.execute("SELECT value FROM state WHERE name = ?", (_COUNTERS,)).fetchone()
        return None if row is None else str(row[0])

    # -- writing (each call commits unless inside transaction()) -------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all."""
        # IMMEDIATE: take the write lock now, so the commit cannot fail with "busy" halfway.
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def insert(self, rows: Sequence[NewRow], ignore_existing: bool = False) -> None:
        """Insert rows (more than one only inside ``transaction()``).

        ``ignore_existing`` skips keys already stored, so a repeated migration is harmless.
        """
        verb = "INSERT OR IGNORE" if ignore_existing else "INSERT"
        sql = f"{verb} INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        if len(rows) == 1:
            self._con.execute(sql, rows[0])
        else:
            self._con.executemany(sql, rows)

    def delete(self, keys: Sequence[int]) -> None:
        """Delete rows by key (more than one only inside ``transaction()``)."""
        if len(keys) == 1:
            self._con.execute("DELETE FROM messages WHERE id = ?", (keys[0],))
            return
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            self._con.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)

    def replace_payload(self, key: int, payload: bytes) -> None:
        """Rewrite one message's payload; it can no longer be shed."""
        self._con.execute("UPDATE messages SET payload = ?, sheddable = 0 WHERE id = ?",
                          (payload, key))

    def set_counters(self, text: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (_COUNTERS, text))

    def close(self) -> None:
        self._reader.close()
        self._con.close()


# -- the diskcache store of earlier versions ----------------------------------------------

LEGACY_FILE = "cache.db"
_LEGACY_COUNTERS_KEY = "outbox:counters"
# version, wall time of put, flags (bit 0: retain), len(kind), len(topic), len(stream)
_LEGACY_HEADER = struct.Struct("<BdBBHH")


def _legacy_row(key: int, value: bytes) -> NewRow:
    version, ts, flags, n_kind, n_topic, n_stream = _LEGACY_HEADER.unpack_from(value)
    if version != 1:
        raise ValueError(f"unknown record version {version}")
    i = _LEGACY_HEADER.size
    kind = value[i : i + n_kind].decode()
    i += n_kind
    topic = value[i : i + n_topic].decode()
    i += n_topic
    stream = value[i : i + n_stream].decode()
    payload = value[i + n_stream :]
    return NewRow(key, ts, stream, kind, topic, bool(flags & 1), maybe_sheddable(kind, payload),
                  payload)


class LegacyStore:
    """An earlier version's diskcache store in ``directory``, read with plain SQLite.

    diskcache kept every value raw in its ``Cache`` table. The messages are read in batches,
    so moving a full outbox (hundreds of MB) does not need that much memory.
    """

    def __init__(self, directory: Path) -> None:
        self._con = sqlite3.connect(directory / LEGACY_FILE, isolation_level=None)
        self.unreadable = 0
        """Records that could not be decoded (counted while ``batches`` runs)."""

    def counters(self) -> str | None:
        """The counters' JSON text, None if the store had none."""
        row = self._con.execute("SELECT value FROM Cache WHERE key = ? AND raw = 1",
                                (_LEGACY_COUNTERS_KEY,)).fetchone()
        return row[0] if row is not None and isinstance(row[0], str) else None

    def batches(self, size: int = _CHUNK) -> Iterator[list[NewRow]]:
        """The messages, oldest first, ``size`` at a time."""
        cursor = self._con.execute(
            "SELECT key, value FROM Cache WHERE raw = 1 AND typeof(key) = 'integer' "
            "ORDER BY key"
        )
        while chunk := cursor.fetchmany(size):
            rows: list[NewRow] = []
            for key, value in chunk:
                try:
                    rows.append(_legacy_row(key, value))
                except (ValueError, TypeError, struct.error, UnicodeDecodeError):
                    self.unreadable += 1
            if rows:
                yield rows

    def close(self) -> None:
        self._con.close()


def remove_legacy(directory: Path) -> None:
    """Delete the earlier version's files once their messages are committed here."""
    for name in (LEGACY_FILE, f"{LEGACY_FILE}-wal", f"{LEGACY_FILE}-shm"):
        (directory / name).unlink(missing_ok=True)

