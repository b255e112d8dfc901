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
import errno
import itertools
import json
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

FILE_NAME = "outbox.db"
CORRUPT_INFIX = ".corrupt-"
"""A corrupt ``outbox.db`` is set aside as ``outbox.db.corrupt-<UTC time>``."""
SCHEMA_VERSION = 1
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
_COUNTERS = "counters"
# The write-ahead log is checkpointed, and cut back, once it reaches this size (a burst does
# not leave a large -wal file on the card), or less where the outbox or the disk is small:
# on a 4 MB file system a 4 MB WAL alone would fill it before max_bytes could act.
WAL_LIMIT_MAX = 4 * 1024 * 1024
WAL_LIMIT_MIN = 128 * 1024
# SQLite's primary result codes (the low byte of an extended one).
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_SQLITE_IOERR_SHMSIZE = 10 | (19 << 8)  # extended code; not in typeshed's sqlite3
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


class CorruptError(sqlite3.DatabaseError):
    """The database failed its integrity check; the message is SQLite's first complaint."""


def error_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc``, None if it carries none."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_corrupt(exc: BaseException) -> bool:
    """The file is damaged or not a database at all (as opposed to unreadable or busy)."""
    return isinstance(exc, CorruptError) or error_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def is_full(exc: BaseException) -> bool:
    """The file system (or a quota) refused to grow a file.

    SQLite says SQLITE_FULL for the database and its WAL, but "disk I/O error"
    (SQLITE_IOERR_SHMSIZE) when the WAL index (-shm) cannot grow: opening on a full disk.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (error_code(exc) == _SQLITE_FULL
            or getattr(exc, "sqlite_errorcode", None) == _SQLITE_IOERR_SHMSIZE)


def wal_limit(max_bytes: int, free_bytes: int | None) -> int:
    """The WAL's size limit: an eighth of ``max_bytes`` and of the free space, within bounds."""
    limit = max_bytes // 8
    if free_bytes is not None:
        limit = min(limit, free_bytes // 8)
    return max(WAL_LIMIT_MIN, min(WAL_LIMIT_MAX, limit))


class OutboxDb:
    """The SQLite database of one outbox directory, in WAL mode.

    Opening checks the file (``PRAGMA quick_check``) and raises ``CorruptError`` when it
    fails, and writes nothing to a database that already has its tables, so that an outbox
    on a full disk still opens and can deliver (deleting needs only the WAL's room).
    """

    def __init__(self, directory: Path, durability: str, wal_bytes: int = WAL_LIMIT_MAX
                 ) -> None:
        self.path = directory / FILE_NAME
        self.wal_bytes = wal_bytes
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
        con.execute(f"PRAGMA journal_size_limit={self.wal_bytes}")
        self.page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
        con.execute(f"PRAGMA wal_autocheckpoint={max(16, self.wal_bytes // self.page_size)}")
        con.execute(f"PRAGMA cache_size={_CACHE_KIB}")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"written by a newer edge-agent (schema {version}, this one knows "
                f"{SCHEMA_VERSION})"
            )
        # Reads every page once: a large backlog costs about a second per 100 MB at open.
        problem = con.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise CorruptError(str(problem))
        if version == SCHEMA_VERSION:
            return  # nothing to write: a full disk must not stop the outbox from opening
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

    # -- space ------------------------------------------------------------------------------

    def free_pages_bytes(self) -> int:
        """Bytes of pages inside the file that new rows can reuse without growing it."""
        count = self._con.execute("PRAGMA freelist_count").fetchone()[0]
        return int(count) * self.page_size

    def checkpoint(self) -> None:
        """Copy the WAL into the database and cut it to nothing (frees its disk space)."""
        self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

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



# -- a corrupt outbox.db, set aside ---------------------------------------------------------

# Never probe more keys one by one than this (a damaged range in a huge key space).
_PROBE_MAX = 5_000_000
_ROW_SQL = "SELECT id, ts, stream, kind, topic, retain, sheddable, payload FROM messages"


def _checked_row(raw: tuple[Any, ...]) -> NewRow | None:
    """A row as read from a damaged file, None if its values cannot be a message's."""
    key, ts, stream, kind, topic, retain, sheddable, payload = raw
    if not (isinstance(key, int) and isinstance(ts, (int, float)) and isinstance(stream, str)
            and isinstance(kind, str) and isinstance(topic, str) and isinstance(payload, bytes)):
        return None
    if kind != "media":
        # Event payloads are JSON: damage inside a row's bytes shows here, not in the b-tree.
        try:
            json.loads(payload)
        except ValueError:
            return None
    return NewRow(key, float(ts), stream, kind, topic, bool(retain), bool(sheddable), payload)


def _restore_length(path: Path) -> None:
    """Give a truncated database file back its recorded length (a sparse tail of zeros).

    SQLite refuses every query on a file shorter than its header says, even those that
    need only the pages still there; zeros in place of the lost pages read as damage where
    they are, and the rest can be read.
    """
    with path.open("r+b") as f:
        header = f.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            return
        page_size = struct.unpack_from(">H", header, 16)[0]
        page_size = 65536 if page_size == 1 else page_size
        pages = struct.unpack_from(">I", header, 28)[0]
        length = f.seek(0, 2)
        if 0 < pages <= (1 << 31) // page_size and length < pages * page_size:
            f.truncate(pages * page_size)


class SalvageStore:
    """What can still be read from a corrupt outbox database (set aside under another name).

    Rows are read oldest first while the b-tree allows; past the damage the newest are found
    from the other end, and the keys in between are probed one by one. A key whose lookup
    fails is counted in ``unreadable``; one that is simply absent was delivered before.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unreadable = 0
        """Messages that could not be read (counted while ``batches`` runs)."""
        self.cause = ""
        """Why reading stopped early, or "" if every row was read."""
        self._con: sqlite3.Connection | None = None
        self._next_key: int | None = None
        with contextlib.suppress(OSError):
            _restore_length(path)
        try:
            self._con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                        isolation_level=None)
            self._con.execute("PRAGMA schema_version").fetchone()
        except sqlite3.Error as exc:
            self.cause = str(exc)
            self.close()

    def counters(self) -> str | None:
        """The counters' JSON text, None if unreadable or damaged."""
        if self._con is None:
            return None
        try:
            row = self._con.execute("SELECT value FROM state WHERE name = ?",
                                    (_COUNTERS,)).fetchone()
            text = None if row is None else str(row[0])
            if text is not None:
                self._next_key = int(json.loads(text).get("next_key", 1))
        except (sqlite3.Error, ValueError, TypeError, AttributeError):
            return None
        return text

    def batches(self, size: int = _CHUNK) -> Iterator[list[NewRow]]:
        """The readable messages, oldest first, ``size`` at a time."""
        rows = self._rows()
        while batch := list(itertools.islice(rows, size)):
            yield batch

    def _rows(self) -> Iterator[NewRow]:
        """The readable messages, oldest first: in one scan while the file allows, then key
        by key past the damage."""
        con = self._con
        if con is None:
            return
        last = 0
        try:
            for raw in con.execute(f"{_ROW_SQL} ORDER BY id"):
                if raw[0] <= last:
                    raise sqlite3.DatabaseError("keys out of order")
                last = raw[0]
                row = _checked_row(raw)
                if row is None:
                    self.unreadable += 1
                    continue
                yield row
            return
        except sqlite3.Error as exc:
            self.cause = str(exc)
        # From the newest end down to the damage: only keys, to probe in order below.
        tail: list[int] = []
        try:
            for (key,) in con.execute("SELECT id FROM messages WHERE id > ? ORDER BY id DESC",
                                      (last,)):
                if tail and key >= tail[-1]:
                    break
                tail.append(key)
        except sqlite3.Error:
            pass
        end = tail[-1] if tail else max(last, (self._next_key or 1) - 1) + 1
        keys = itertools.chain(range(last + 1, min(end, last + 1 + _PROBE_MAX)), reversed(tail))
        # A damaged page can hide a row without an error (its cell reads as another key).
        # A key found missing between two keys that were there (or failed) is counted as
        # unreadable: it may have been delivered before, but nothing is lost uncounted.
        inside, missing = last > 0, 0
        for key in keys:
            try:
                raw = con.execute(f"{_ROW_SQL} WHERE id = ?", (key,)).fetchone()
            except sqlite3.Error:
                raw = ()
            if raw is None:
                missing += 1
                continue
            if inside:
                self.unreadable += missing
            inside, missing = True, 0
            row = _checked_row(raw) if raw else None
            if row is None:
                self.unreadable += 1
                continue
            yield row

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
