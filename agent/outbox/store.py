"""The durable outbox: a bounded disk queue (SQLite) between producers and MQTT.

Every message is committed to SQLite before ``put`` returns and is deleted only by ``ack``,
so a crash (``kill -9``, reboot) repeats at most what was in flight and never loses what was
stored. Order is kept per stream (usually the source id); ``claim`` serves streams
round-robin so one stream's backlog does not hold back the others.

The file is ``outbox.db`` (see ``agent.outbox.db``): a row per message, and the counters
(JSON) in a row of their own, written in the same transaction as every drop so that drop
counts survive restarts exactly. A ``cache.db`` left by version 0.1 (diskcache) is moved
into it on open. An in-memory index (rebuilt on open from the rows' metadata, without
reading the payloads) keeps ``claim``, bounds and TTL from scanning the database, and
recently put messages stay in memory (bounded) so live delivery does not read back what it
has just written.

Disk pressure is a state, not an error: the bound shrinks to what the file system has room
for above ``min_free_bytes`` (measured once a second), so ``on_full`` makes room before the
file system refuses; a reserve file is given back when space runs short, so deletes and
checkpoints always can; a delete that still cannot commit is remembered and retried. A
corrupt ``outbox.db`` is set aside and what can be read is saved into a fresh one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
from bisect import insort
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from agent.clock import Clock, SystemClock
from agent.fsmodes import private_dir, private_file
from agent.outbox import db as dbfile
from agent.outbox.config import OutboxConfig
from agent.outbox.db import NewRow, OutboxDb
from agent.outbox.summary import RepeatSummary

logger = logging.getLogger(__name__)

DROP_REASONS = ("full_drop_oldest", "full_reject_new", "max_events", "ttl", "too_large",
                "disk_full", "corrupt")
"""Keys of ``OutboxStats.drops``: why a message was dropped or refused.

``disk_full``: refused because the file system had no room even after making room by
``on_full``; ``corrupt``: could not be read back from a damaged ``outbox.db``.
"""

_LOCK_NAME = "outbox.lock"
# Released when the file system runs short, so that deleting (which needs room in the WAL)
# and checkpointing always can; made again once there is room.
RESERVE_NAME = "outbox.reserve"
# Free space is measured at most this often (seconds), and sooner once the outbox has grown
# by half of the room the last measurement left.
_SPACE_CHECK_S = 1.0
# Bytes on disk per byte counted against max_bytes, at worst (SQLite's page fill, 1 KB rows).
_DISK_PER_BYTE = 1.3
# What one message counts against max_bytes besides its strings and payload: about what its
# row costs SQLite (rowid, header, ts, flags), so tiny messages are not counted as free.
_ROW_OVERHEAD = 24
# Payloads kept in memory after put so that live delivery does not read them back.
_RECENT_BYTES = 8 * 1024 * 1024
# Counters that change on every message (enqueued, acked) are written at most this often
# (seconds); drops are written with the transaction that drops.
_COUNTER_FLUSH_S = 1.0
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


@dataclass
class _Plan:
    """Changes that make room for new messages, applied to memory only after the commit."""

    drops: list[tuple[int, str]] = field(default_factory=list)
    shed_drop: list[int] = field(default_factory=list)
    shed_rewrite: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # payload, size
    not_sheddable: list[int] = field(default_factory=list)  # events with nothing to strip

    def __bool__(self) -> bool:
        return bool(self.drops or self.shed_drop or self.shed_rewrite)


_NO_PLAN = _Plan()  # shared: nothing to do (never modified)
_NO_KEYS: list[int] = []  # shared: no keys (never modified)


def _size(kind: str, topic: str, stream: str, payload_size: int) -> int:
    """Bytes a message counts against ``max_bytes``."""
    return (_ROW_OVERHEAD + len(kind.encode()) + len(topic.encode()) + len(stream.encode())
            + payload_size)


def strip_inline_media(payload: bytes) -> bytes | None:
    """The event JSON with ``images[].data`` and ``audio.data`` set to null, or None if none."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    changed = False
    images = event.get("images")
    if isinstance(images, list):
        for image in images:
            if isinstance(image, dict) and image.get("data") is not None:
                image["data"] = None
                changed = True
    audio = event.get("audio")
    if isinstance(audio, dict) and audio.get("data") is not None:
        audio["data"] = None
        changed = True
    if not changed:
        return None
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


class Outbox:
    """A durable, bounded, per-stream FIFO queue of messages waiting for the broker.

    ``put``/``put_many`` may be called from any number of threads; one delivery thread calls
    ``claim`` and ``release``, and ``ack`` may run on another. A message in flight (claimed,
    not yet acked or released) is dropped to make room only when nothing else can be, and
    never by TTL.

    Two locks: ``_lock`` guards the in-memory index and the read connection, ``_db_lock``
    the write connection, always taken in that order. ``ack`` lets go of ``_lock`` while
    its delete commits, so claiming and reading the backlog are not held up by the commit.
    """

    def __init__(self, config: OutboxConfig, clock: Clock | None = None) -> None:
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._path = Path(config.path)
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._meta: OrderedDict[int, _Meta] = OrderedDict()
        self._ready: dict[str, deque[int]] = {}
        # Streams with something ready, in serving order (an ordered set).
        self._rr: OrderedDict[str, None] = OrderedDict()
        self._claimed: set[int] = set()
        # Claimed keys whose rows ``ack`` is deleting right now: key -> size, and the total.
        self._acking: dict[int, int] = {}
        self._acking_bytes = 0
        self._sheddable: deque[int] = deque()
        self._recent: OrderedDict[int, OutboxMessage] = OrderedDict()
        self._recent_bytes = 0
        self._bytes = 0
        self._lockfile: IO[bytes] | None = None
        self._counters = _Counters()
        self._counters_dirty = False
        self._counters_flushed = self._clock.monotonic()
        # Keys delivered whose delete could not commit yet (disk full): key -> size. They
        # are not sent again, and their delete is retried with every later write.
        self._ack_pending: dict[int, int] = {}
        self._ack_pending_bytes = 0
        # Disk pressure: the most the outbox may hold given the free space (bytes), when and
        # at what size that was measured, and whether the file system is short.
        self._disk_cap = config.max_bytes
        self._limit = config.max_bytes  # min(max_bytes - set-aside bytes, _disk_cap)
        self._puts = 0
        self._space_checked = float("-inf")
        self._space_bytes = 0
        self._space_room = 0
        self._disk_full = False
        self._reserve_bytes = dbfile.WAL_LIMIT_MIN
        # Corrupt databases set aside: (path, bytes), oldest first.
        self._aside: list[tuple[Path, int]] = []
        self._aside_bytes = 0
        self._corrupt: tuple[Path, str] | None = None  # set aside at this open, and why
        monotonic = self._clock.monotonic
        self._drop_log = RepeatSummary(logger, f"outbox {self._path}: dropped", monotonic)
        self._error_log = RepeatSummary(logger, f"outbox {self._path}: write errors", monotonic,
                                        level=logging.ERROR)
        self._db = self._open()
        try:
            self._load()
        except BaseException:
            self._release_resources()
            raise

    # ------------------------------------------------------------------ opening

    def _error(self, action: str, exc: BaseException) -> OutboxError:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        name = getattr(exc, "sqlite_errorname", None)
        if name:
            cause = f"{cause} ({name})"
        if action == "write":
            # "disk I/O error" alone does not tell an operator whether the card is full.
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(self._path).free
                cause = f"{cause}; {free / 1e6:.1f} MB free on its file system"
        return OutboxError(f"outbox {self._path}: cannot {action}: {cause}")

    def _open(self) -> OutboxDb:
        try:
            private_dir(self._path)  # 0700 / 0600 whatever the umask: events are private
            for name in (_LOCK_NAME, dbfile.FILE_NAME):
                private_file(self._path / name)
            for name in (f"{dbfile.FILE_NAME}-wal", f"{dbfile.FILE_NAME}-shm"):
                private_file(self._path / name, create=False)
        except OSError as exc:
            raise self._error("create", exc) from exc
        try:
            lockfile = open(self._path / _LOCK_NAME, "ab")  # noqa: SIM115 (held until close)
        except OSError as exc:
            raise self._error("open", exc) from exc
        try:
            # A second agent on the same directory would send everything twice.
            fcntl.lockf(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lockfile.close()
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise OutboxError(
                    f"outbox {self._path}: cannot open: in use by another process"
                ) from exc
            raise self._error("lock", exc) from exc
        self._lockfile = lockfile
        try:
            self._find_aside()
            free = self._free_bytes()
            self._reserve_bytes = dbfile.wal_limit(self._config.max_bytes, free)
            if free is not None and free < self._config.min_free_bytes + self._reserve_bytes:
                # Opening may need room for the WAL index and a checkpoint.
                self._release_reserve()
            while True:
                try:
                    return self._open_db()
                except _DB_ERRORS as exc:
                    if dbfile.is_full(exc):
                        # Room for the WAL index: the reserve, then set-aside files.
                        if self._release_reserve():
                            continue
                        if self._aside:
                            self._remove_oldest_aside()
                            continue
                    if not dbfile.is_corrupt(exc):
                        raise
                    return self._set_aside(exc)
        except _DB_ERRORS as exc:
            self._release_resources()
            raise self._error("open", exc) from exc

    def _open_db(self) -> OutboxDb:
        """The one place that opens ``outbox.db`` (new or existing)."""
        return OutboxDb(self._path, self._config.durability, self._reserve_bytes)

    def _stamp(self) -> str:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.time()))

    def _set_aside(self, exc: BaseException) -> OutboxDb:
        """Move a corrupt ``outbox.db`` aside and open a fresh one (filled by ``_load``)."""
        stamp = self._stamp()
        db_path = self._path / dbfile.FILE_NAME
        aside = db_path.with_name(f"{dbfile.FILE_NAME}{dbfile.CORRUPT_INFIX}{stamp}")
        n = 1
        while aside.exists():
            aside = aside.with_name(f"{dbfile.FILE_NAME}{dbfile.CORRUPT_INFIX}{stamp}-{n}")
            n += 1
        db_path.rename(aside)
        # The WAL belongs to the damaged file: beside a fresh database it would be replayed.
        wal = self._path / f"{dbfile.FILE_NAME}-wal"
        if wal.exists():
            wal.rename(aside.with_name(f"{aside.name}-wal"))
        (self._path / f"{dbfile.FILE_NAME}-shm").unlink(missing_ok=True)
        # quick_check's report spans lines ("*** in database main ***\nPage 88: ...").
        cause = " ".join(str(exc).replace("*** in database main ***", "").split())
        self._corrupt = (aside, cause or type(exc).__name__)
        self._find_aside()
        return self._open_db()

    def _load(self) -> None:
        """Rebuild the index from the rows; everything not acked becomes claimable again."""
        if self._corrupt is not None:
            self._salvage(*self._corrupt)
        if (self._path / dbfile.LEGACY_FILE).exists():
            self._migrate()
        try:
            text = self._db.counters()
            if text is not None:
                self._counters = _Counters.from_json(text)
            last = 0
            for row in self._db.rows():
                # Interned: a backlog repeats a few stream names and kinds many times.
                stream, kind = sys.intern(row.stream), sys.intern(row.kind)
                size = _size(kind, row.topic, stream, row.payload_size)
                self._index(row.key, stream, kind, size, row.ts, row.sheddable)
                last = row.key
        except _DB_ERRORS as exc:
            raise self._error("read", exc) from exc
        self._counters.next_key = max(self._counters.next_key, last + 1)
        if self._meta:
            logger.info("outbox %s: %d messages (%d bytes) waiting from before",
                        self._path, len(self._meta), self._bytes)

    def _migrate(self) -> None:
        """Move the messages of an earlier version's diskcache store into this database."""
        legacy_path = self._path / dbfile.LEGACY_FILE
        moved = 0
        try:
            legacy = dbfile.LegacyStore(self._path)
            try:
                counters = legacy.counters()
                if counters is not None and self._db.counters() is None:
                    self._db.set_counters(counters)
                # A commit per batch, keys kept and existing ones skipped: a migration cut
                # short by a crash is simply done again.
                for rows in legacy.batches():
                    with self._db.transaction():
                        self._db.insert(rows, ignore_existing=True)
                    moved += len(rows)
                unreadable = legacy.unreadable
            finally:
                legacy.close()
            dbfile.remove_legacy(self._path)
        except _DB_ERRORS as exc:
            if dbfile.is_corrupt(exc):
                # What was moved is committed; the rest cannot be read. Keep the device up.
                aside = legacy_path.with_name(
                    f"{legacy_path.name}{dbfile.CORRUPT_INFIX}{self._stamp()}")
                legacy_path.rename(aside)
                dbfile.remove_legacy(self._path)
                self._find_aside()
                logger.error("outbox %s: corrupt (%s), written by an earlier version; set aside "
                             "as %s: %d messages moved into %s, the rest unreadable and not "
                             "counted", legacy_path, exc, aside.name, moved, dbfile.FILE_NAME)
                return
            raise OutboxError(
                f"outbox {self._path}: cannot move the messages of {legacy_path.name} (written "
                f"by an earlier version) into {dbfile.FILE_NAME}: {exc}"
            ) from exc
        logger.info("outbox %s: moved %d waiting messages from %s into %s", self._path, moved,
                    legacy_path.name, dbfile.FILE_NAME)
        if unreadable:
            logger.error("outbox %s: %d messages in %s were unreadable and are lost",
                         self._path, unreadable, legacy_path.name)

    def _salvage(self, aside: Path, cause: str) -> None:
        """Copy what can be read from the set-aside file into the fresh database; count the
        rest as drops "corrupt" (and "disk_full" for rows there was no room for)."""
        source = dbfile.SalvageStore(aside)
        moved = no_room = 0
        last = 0
        try:
            text = source.counters()
            counters = _Counters()
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                counters = _Counters.from_json(text) if text is not None else _Counters()
            for rows in source.batches():
                last = max(last, rows[-1].key)
                if no_room:
                    no_room += len(rows)
                    continue
                try:
                    with self._db.transaction():
                        self._db.insert(rows, ignore_existing=True)
                    moved += len(rows)
                except _DB_ERRORS as exc:
                    if not dbfile.is_full(exc):
                        raise
                    no_room += len(rows)
        finally:
            source.close()
            # Reading it made an empty WAL and an index beside it: not part of the evidence.
            (aside.parent / f"{aside.name}-shm").unlink(missing_ok=True)
            wal = aside.parent / f"{aside.name}-wal"
            with contextlib.suppress(OSError):
                if wal.stat().st_size == 0:
                    wal.unlink()
            self._find_aside()
        counters.drops["corrupt"] = counters.drops.get("corrupt", 0) + source.unreadable
        counters.drops["disk_full"] = counters.drops.get("disk_full", 0) + no_room
        counters.next_key = max(counters.next_key, last + 1)
        try:
            self._db.set_counters(counters.to_json())
        except _DB_ERRORS as exc:
            raise self._error("write", exc) from exc
        if source.cause and not moved and not source.unreadable:
            counted = "nothing could be read from it, and how many messages it held is unknown"
        else:
            counted = (f"{moved} messages saved into a fresh {dbfile.FILE_NAME}, "
                       f"{source.unreadable} unreadable (counted as drops \"corrupt\")")
            if no_room:
                counted += f", {no_room} without room (counted as \"disk_full\")"
        logger.error("outbox %s: corrupt (%s); set aside as %s: %s", aside.parent /
                     dbfile.FILE_NAME, cause, aside.name, counted)

    # ------------------------------------------------------------------ disk space

    def _find_aside(self) -> None:
        """The corrupt databases set aside earlier, oldest first, with their sizes."""
        found: dict[str, int] = {}
        for path in self._path.glob(f"*{dbfile.CORRUPT_INFIX}*"):
            base = path.name.removesuffix("-wal").removesuffix("-shm")
            with contextlib.suppress(OSError):
                found[base] = found.get(base, 0) + path.stat().st_size
        self._aside = [(self._path / name, size) for name, size in sorted(found.items())]
        self._aside_bytes = sum(size for _, size in self._aside)
        self._update_limit()

    def _remove_oldest_aside(self) -> None:
        path, size = self._aside.pop(0)
        self._aside_bytes -= size
        self._update_limit()
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()
        logger.warning("outbox %s: removed %s (%d bytes) to make room: set-aside files count "
                       "against max_bytes", self._path, path.name, size)
        self._space_checked = float("-inf")

    def _free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self._path).free
        except OSError:
            return None

    def _release_reserve(self) -> bool:
        """Delete the reserve file; True if there was one."""
        try:
            (self._path / RESERVE_NAME).unlink()
        except OSError:
            return False
        return True

    def _make_reserve(self) -> None:
        path = self._path / RESERVE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()

    def _check_space(self, force: bool = False) -> None:
        """Fit the outbox to the file system's free space (``_lock`` held).

        Below ``min_free_bytes`` (the reserve given back first) the outbox stops growing:
        what it adds, it must make room for by ``on_full``. Above it, it may grow by what
        the file system still has over ``min_free_bytes`` plus the pages free inside the
        file, less the WAL's room, at the worst page fill.
        """
        now = self._clock.monotonic()
        if not force and now - self._space_checked < _SPACE_CHECK_S and (
                self._bytes - self._space_bytes < self._space_room // 2):
            return
        self._space_checked = now
        free = self._free_bytes()
        if free is None:
            return
        reserve = self._path / RESERVE_NAME
        has_reserve = reserve.exists()
        headroom = free - self._config.min_free_bytes
        if headroom < 0 and has_reserve and self._release_reserve():
            headroom += self._reserve_bytes
            has_reserve = False
        try:
            with self._db_lock:
                reusable = self._db.free_pages_bytes()
        except _DB_ERRORS:
            reusable = 0
        short = headroom < 0
        if short and not self._disk_full:
            self._disk_full = True
            self._checkpoint()
            logger.warning(
                "outbox %s: only %.1f MB free on its file system, below outbox.min_free_bytes "
                "(%.1f MB): the outbox stops growing and makes room per on_full=%s until "
                "space is freed", self._path, free / 1e6, self._config.min_free_bytes / 1e6,
                self._config.on_full)
        elif self._disk_full and headroom > self._reserve_bytes:
            self._disk_full = False
            logger.info("outbox %s: %.1f MB free on its file system again; storing normally",
                        self._path, free / 1e6)
        if not has_reserve and headroom > 2 * self._reserve_bytes:
            self._make_reserve()
            headroom -= self._reserve_bytes
        try:
            wal = (self._path / f"{dbfile.FILE_NAME}-wal").stat().st_size
        except OSError:
            wal = 0
        room = max(0, headroom - max(0, self._reserve_bytes - wal)) + reusable
        self._space_room = int(room / _DISK_PER_BYTE)
        self._space_bytes = self._bytes
        self._disk_cap = self._bytes + self._space_room
        self._update_limit()

    def _update_limit(self) -> None:
        """What the outbox may hold now: ``max_bytes`` less the set-aside files, and no
        more than the file system has room for."""
        self._limit = min(self._config.max_bytes - self._aside_bytes, self._disk_cap)

    def _checkpoint(self) -> None:
        with self._db_lock, contextlib.suppress(*_DB_ERRORS):
            self._db.checkpoint()

    def _space_refused(self) -> None:
        """A write failed for want of space: give back the reserve, cut the WAL, measure."""
        self._release_reserve()
        self._checkpoint()
        self._check_space(force=True)
        if not self._disk_full:
            self._disk_full = True
            logger.warning("outbox %s: the file system refused a write (full); making room "
                           "per on_full=%s", self._path, self._config.on_full)

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

    # ------------------------------------------------------------------ in-memory index

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

    # ------------------------------------------------------------------ writing

    def put(self, message: OutboxMessage) -> bool:
        """Store one message; durable when this returns True.

        False means refused and counted: ``reject_new`` while full, or a message larger
        than ``max_bytes``. Raises ``OutboxError`` when the disk cannot be written.
        """
        return self.put_many((message,))

    def put_many(self, messages: Sequence[OutboxMessage]) -> bool:
        """Store several messages all-or-nothing, in one transaction (an event and its media).

        On a file system short of space the outbox makes room by ``on_full`` first; what it
        still cannot store is refused and counted as ``disk_full``, not raised.
        """
        if not messages:
            return True
        with self._lock:
            self._check_open()
            now = self._clock.time()
            self._expire_locked(now)
            # The daemon's housekeeping (expire) measures the space each second; a caller
            # that never calls it gets a measurement at most once a second from here.
            self._puts += 1
            if not self._puts & 63 or self._puts == 1:
                self._check_space()
            sizes = [_size(m.kind, m.topic, m.stream, len(m.payload)) for m in messages]
            for _ in range(2):
                plan = self._plan_room(sum(sizes), len(messages))
                if plan is None:
                    return False
                try:
                    self._store(messages, sizes, plan, now)
                    return True
                except _DB_ERRORS as exc:
                    if not dbfile.is_full(exc):
                        raise self._error("write", exc) from exc
                    # Made room on disk and fitted the bound to it: try once more.
                    self._space_refused()
            self._refuse("disk_full", len(messages))
            return False

    def _store(self, messages: Sequence[OutboxMessage], sizes: list[int], plan: _Plan,
               now: float) -> None:
        """Commit the plan and the new rows, then update the index (``_lock`` held)."""
        count = len(messages)
        first = self._counters.next_key
        rows = [
            NewRow(first + i, now, m.stream, m.kind, m.topic, m.retain,
                   dbfile.maybe_sheddable(m.kind, m.payload), m.payload)
            for i, m in enumerate(messages)
        ]
        acked = list(self._ack_pending) if self._ack_pending else _NO_KEYS
        flush = bool(plan) or bool(acked) or self._flush_due()
        with self._db_lock:
            if count == 1 and not flush:
                # The common case: one row, one statement, its own commit; counters later.
                self._db.insert(rows)
                counters = self._counters
            else:
                counters = self._counters.copy()
                self._count_plan(plan, counters)
                counters.next_key += count
                counters.enqueued += count
                counters.acked += len(acked)
                with self._db.transaction():
                    if acked:
                        self._db.delete(acked)
                    self._write_plan(plan)
                    self._db.insert(rows)
                    if flush:
                        self._db.set_counters(counters.to_json())
        if counters is self._counters:
            counters.next_key += count
            counters.enqueued += count
        else:
            self._counters = counters
        if acked:
            self._acked_committed(acked)
        if plan:
            self._apply_plan(plan)
        if flush:
            self._flushed()
        else:
            self._counters_dirty = True
        for row, message, size in zip(rows, messages, sizes, strict=True):
            self._index(row.key, message.stream, message.kind, size, now, row.sheddable)
            self._remember(row.key, message)
        self._cond.notify_all()

    def _plan_room(self, add_bytes: int, add_count: int) -> _Plan | None:
        """Decide what to shed or drop for ``add_bytes``/``add_count`` more, None to refuse."""
        config = self._config
        if add_bytes > config.max_bytes:
            self._refuse("too_large", add_count)
            return None
        # Messages being acknowledged are as good as gone: their delete commits before ours
        # (or with it, for those whose delete is still pending).
        gone_bytes = self._acking_bytes + self._ack_pending_bytes
        over_bytes = self._bytes - gone_bytes + add_bytes - self._limit
        # Set-aside corrupt files count against max_bytes and go first, oldest first.
        while over_bytes > 0 and self._aside:
            self._remove_oldest_aside()
            self._check_space(force=True)
            over_bytes = self._bytes - gone_bytes + add_bytes - self._limit
        over_count = 0
        if config.max_events is not None:
            if add_count > config.max_events:
                self._refuse("max_events", add_count)
                return None
            over_count = (len(self._meta) - len(self._acking) - len(self._ack_pending)
                          + add_count - config.max_events)
        if over_bytes <= 0 and over_count <= 0:
            return _NO_PLAN
        plan = _Plan()
        if config.on_full == "reject_new":
            self._refuse("full_reject_new", add_count)
            return None
        chosen: set[int] = set()
        if config.on_full == "shed_images":
            # Oldest first: media messages go, events lose their inline images and audio.
            for key in self._sheddable:
                if over_bytes <= 0 and over_count <= 0:
                    break
                meta = self._meta.get(key)
                if meta is None or not meta.sheddable or key in self._acking:
                    continue
                if meta.kind == "media":
                    plan.shed_drop.append(key)
                    chosen.add(key)
                    over_bytes -= meta.size
                    over_count -= 1
                elif over_bytes > 0:
                    stripped = self._stripped(key)
                    if stripped is None:
                        plan.not_sheddable.append(key)
                    else:
                        plan.shed_rewrite[key] = stripped
                        over_bytes -= meta.size - stripped[1]
        for key in self._oldest_first(chosen):
            if over_bytes <= 0 and over_count <= 0:
                break
            reason = "full_drop_oldest" if over_bytes > 0 else "max_events"
            plan.drops.append((key, reason))
            stripped = plan.shed_rewrite.pop(key, None)
            over_bytes -= self._meta[key].size if stripped is None else stripped[1]
            over_count -= 1
        if over_bytes > 0 and self._disk_cap < config.max_bytes - self._aside_bytes:
            # Nothing left to drop and the disk has no room: refuse rather than let the
            # file system refuse (and drop nothing old for a message that is not stored).
            self._refuse("disk_full", add_count)
            return None
        return plan

    def _stripped(self, key: int) -> tuple[bytes, int] | None:
        """Event ``key``'s payload without inline media and its new size; None if nothing."""
        message = self._recent.get(key)
        if message is None:
            message = self._read([key]).get(key)
            if message is None:
                return None
        payload = strip_inline_media(message.payload)
        if payload is None:
            return None
        return payload, self._meta[key].size - len(message.payload) + len(payload)

    def _refuse(self, reason: str, count: int) -> None:
        self._counters.drops[reason] = self._counters.drops.get(reason, 0) + count
        self._counters_dirty = True
        self._drop_log.add(reason, count, lambda: self._drop_line(reason, count))
        # Not worth a commit per refused message while full; at most one per interval.
        if self._flush_due():
            with contextlib.suppress(OutboxError):  # kept dirty; written with a later commit
                self._flush_counters()

    def _drop_line(self, reason: str, count: int) -> str:
        """The first line of an episode of drops: what happens and what to do about it."""
        config, where = self._config, f"outbox {self._path}"
        state = f"{len(self._meta)} messages, {self._bytes} bytes"
        disk = ""
        if self._disk_cap < config.max_bytes - self._aside_bytes:
            free = self._free_bytes()
            disk = (f"; bounded by its file system ({(free or 0) / 1e6:.1f} MB free, "
                    f"outbox.min_free_bytes {config.min_free_bytes / 1e6:.1f} MB)")
        lines = {
            "full_drop_oldest": f"{where}: full ({state}{disk}); dropping the oldest messages "
                                f"per on_full={config.on_full}",
            "full_reject_new": f"{where}: full ({state}{disk}); refusing new messages per "
                               f"on_full=reject_new",
            "max_events": f"{where}: holds max_events={config.max_events}; dropping the oldest",
            "ttl": f"{where}: dropped {count} message(s) older than ttl={config.ttl} s",
            "too_large": f"{where}: refused a message larger than max_bytes={config.max_bytes}",
            "disk_full": f"{where}: cannot store new messages: its file system is full"
                         f"{disk or ''} and nothing is left to drop",
            "shed": f"{where}: full ({state}{disk}); stripping images and clips from the "
                    f"oldest events per on_full=shed_images",
        }
        return f"{lines.get(reason, f'{where}: dropped {count} ({reason})')} (counted in the "\
               f"stats' drops; repeats are summarised once a minute)"

    def _count_plan(self, plan: _Plan, counters: _Counters) -> None:
        for _, reason in plan.drops:
            counters.drops[reason] = counters.drops.get(reason, 0) + 1
        counters.shed += len(plan.shed_drop) + len(plan.shed_rewrite)

    def _write_plan(self, plan: _Plan) -> None:
        """Inside a transaction: delete and rewrite the rows the plan names."""
        gone = [key for key, _ in plan.drops] + plan.shed_drop
        if gone:
            self._db.delete(gone)
        for key, (payload, _) in plan.shed_rewrite.items():
            self._db.replace_payload(key, payload)

    def _apply_plan(self, plan: _Plan) -> None:
        """After the commit: make the index agree with the rows."""
        for key, _ in plan.drops:
            self._forget(key)
        for key in plan.shed_drop:
            self._forget(key)
        for key, (_, size) in plan.shed_rewrite.items():
            meta = self._meta.get(key)
            if meta is None:
                continue
            self._meta[key] = meta._replace(size=size, sheddable=False)
            self._bytes += size - meta.size
            recent = self._recent.pop(key, None)
            if recent is not None:
                self._recent_bytes -= len(recent.payload)
        for key in plan.not_sheddable:
            meta = self._meta.get(key)
            if meta is not None:
                self._meta[key] = meta._replace(sheddable=False)
        sheddable = self._sheddable
        while sheddable and (
            sheddable[0] not in self._meta or not self._meta[sheddable[0]].sheddable
        ):
            sheddable.popleft()
        # While full, every put drops something: one line, then a count once a minute.
        reasons: dict[str, int] = {}
        for _, reason in plan.drops:
            reasons[reason] = reasons.get(reason, 0) + 1
        shed = len(plan.shed_drop) + len(plan.shed_rewrite)
        if shed:
            reasons["shed"] = shed
        for reason, count in reasons.items():
            line = self._drop_line(reason, count) if not self._drop_log.active else ""
            self._drop_log.add(reason, count, lambda: line)  # noqa: B023 (called at once)

    # ------------------------------------------------------------------ delivery

    def claim(self, limit: int) -> list[tuple[int, OutboxMessage]]:
        """Take up to ``limit`` messages for delivery: per-stream FIFO, streams round-robin."""
        with self._lock:
            self._check_open()
            self._expire_locked(self._clock.time())
            keys: list[int] = []
            while len(keys) < limit and self._rr:
                stream, _ = self._rr.popitem(last=False)
                ready = self._ready[stream]
                keys.append(ready.popleft())
                if ready:
                    self._rr[stream] = None  # to the back of the round
                else:
                    del self._ready[stream]
            recent = self._recent
            missing = [key for key in keys if key not in recent]
            try:
                stored = self._read(missing) if missing else {}
            except OutboxError:
                # Put the keys back, in order, so nothing is lost from the index.
                for key in reversed(keys):
                    self._make_ready(self._meta[key].stream, key)
                raise
            out: list[tuple[int, OutboxMessage]] = []
            for key in keys:
                message = recent.get(key) or stored.get(key)
                if message is None:
                    continue  # its row vanished: already logged and forgotten by _read
                self._claimed.add(key)
                out.append((key, message))
        return out

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

    def ack(self, keys: Iterable[int]) -> None:
        """Remove delivered messages, durably and in one transaction; unknown keys are ignored.

        The delete commits while ``_lock`` is free, so ``claim`` and ``put`` (which then
        counts these messages as gone) go on meanwhile; ``_db_lock`` is taken before
        ``_lock`` is let go, so no other write can come in between. A delete that cannot
        commit (a full disk) is not an error for the caller: the messages are remembered as
        delivered, never sent again by this process, and their delete is retried with the
        next write or ``expire``.
        """
        with self._lock:
            self._check_open()
            known = [k for k in keys
                     if k in self._meta and k not in self._acking and k not in self._ack_pending]
            if self._ack_pending:
                known.extend(self._take_pending())
            if not known:
                return
            for key in known:
                size = self._acking[key] = self._meta[key].size
                self._acking_bytes += size
            # Counted now, so that a close() during the commit writes the right total.
            self._counters.acked += len(known)
            counters = self._counters.to_json() if self._flush_due() else None
            if counters is None:
                self._counters_dirty = True
            else:
                self._flushed()
            self._db_lock.acquire()
        error: BaseException | None = None
        try:
            for attempt in range(2):
                try:
                    if len(known) == 1 and counters is None:
                        self._db.delete(known)
                    else:
                        with self._db.transaction():
                            self._db.delete(known)
                            if counters is not None:
                                self._db.set_counters(counters)
                    error = None
                    break
                except _DB_ERRORS as exc:
                    error = exc
                    if attempt or not dbfile.is_full(exc):
                        break
                    # Deleting needs room in the WAL: that is what the reserve is for.
                    self._release_reserve()
                    with contextlib.suppress(*_DB_ERRORS):
                        self._db.checkpoint()
        finally:
            self._db_lock.release()
        with self._lock:
            for key in known:
                self._acking_bytes -= self._acking.pop(key)
            if error is not None:
                self._counters.acked -= len(known)
                self._counters_dirty = True
                for key in known:
                    if key in self._meta:
                        self._ack_pending[key] = self._meta[key].size
                        self._ack_pending_bytes += self._meta[key].size
                exc_out = self._error("write", error)
                self._error_log.add("ack", len(known), lambda: (
                    f"{exc_out}; {len(self._ack_pending)} delivered messages are kept until "
                    f"their removal commits (not sent again)"))
                return
            self._acked_committed(known)

    def _take_pending(self) -> list[int]:
        """The keys whose delete is still pending, to be deleted now (``_lock`` held)."""
        keys = list(self._ack_pending)
        self._ack_pending.clear()
        self._ack_pending_bytes = 0
        return keys

    def _acked_committed(self, keys: list[int]) -> None:
        """Their delete has committed: forget them (``_lock`` held)."""
        pending = self._ack_pending
        for key in keys:
            if pending:
                size = pending.pop(key, None)
                if size is not None:
                    self._ack_pending_bytes -= size
            self._forget(key)

    def release(self, keys: Iterable[int]) -> None:
        """Give claimed messages back (no PUBACK came); they are claimed again, in order."""
        with self._lock:
            released = False
            for key in sorted(keys, reverse=True):
                if (key in self._claimed and key not in self._acking
                        and key not in self._ack_pending):
                    self._claimed.discard(key)
                    self._make_ready(self._meta[key].stream, key)
                    released = True
            if released:
                self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Block until something is claimable or ``timeout`` seconds pass; True if claimable."""
        with self._lock:
            if self._ready:
                return True
            if timeout <= 0 or self._closed:
                return False
            self._cond.wait_for(lambda: bool(self._ready) or self._closed, timeout)
            return bool(self._ready)

    # ------------------------------------------------------------------ bounds in time

    def expire(self) -> int:
        """Drop messages older than ``ttl`` (counted as "ttl"); returns how many.

        Also the outbox's housekeeping, meant to be called about once a second: measures the
        free space, retries deletes still pending from a full disk and writes the summaries
        of repeated drops and errors.
        """
        with self._lock:
            self._check_open()
            self._check_space()
            pending = bool(self._ack_pending)
        if pending:
            self.ack(())
        with self._lock:
            self._drop_log.tick()
            self._error_log.tick()
            return self._expire_locked(self._clock.time())

    def _expire_locked(self, now: float) -> int:
        ttl = self._config.ttl
        if ttl is None or not self._meta:
            return 0
        cutoff = now - ttl
        victims: list[int] = []
        for key, meta in self._meta.items():
            if key in self._claimed:
                continue  # in flight: it leaves by ack, or expires after release
            if meta.ts > cutoff:
                break
            victims.append(key)
        if not victims:
            return 0
        counters = self._counters.copy()
        counters.drops["ttl"] = counters.drops.get("ttl", 0) + len(victims)
        try:
            with self._db_lock, self._db.transaction():
                self._db.delete(victims)
                self._db.set_counters(counters.to_json())
        except _DB_ERRORS as exc:
            if not dbfile.is_full(exc):
                raise self._error("write", exc) from exc
            # Expired messages stay until a later try: a full disk must not fail the put
            # or the claim that came here first.
            self._release_reserve()
            line = f"{self._error('write', exc)}; messages past their ttl are dropped later"
            self._error_log.add("ttl", 1, lambda: line)
            return 0
        self._counters = counters
        self._flushed()
        for key in victims:
            self._forget(key)
        self._drop_log.add("ttl", len(victims), lambda: self._drop_line("ttl", len(victims)))
        return len(victims)

    # ------------------------------------------------------------------ counters and stats

    def _flush_due(self) -> bool:
        return self._counters_dirty and (
            self._clock.monotonic() - self._counters_flushed >= _COUNTER_FLUSH_S
        )

    def _flushed(self) -> None:
        self._counters_dirty = False
        self._counters_flushed = self._clock.monotonic()

    def _flush_counters(self) -> None:
        try:
            with self._db_lock:
                self._db.set_counters(self._counters.to_json())
        except _DB_ERRORS as exc:
            raise self._error("write", exc) from exc
        self._flushed()

    def stats(self) -> OutboxStats:
        """Depth, bytes, age of the oldest message and counters since the store was created."""
        with self._lock:
            oldest = None
            if self._meta:
                first = next(iter(self._meta.values()))
                oldest = max(0.0, self._clock.time() - first.ts)
            c = self._counters
            return OutboxStats(
                depth=len(self._meta),
                bytes=self._bytes,
                oldest_age_s=oldest,
                in_flight=len(self._claimed),
                enqueued=c.enqueued,
                acked=c.acked,
                drops=dict(c.drops),
                shed=c.shed,
                disk_full=self._disk_full,
                set_aside_bytes=self._aside_bytes,
            )

    # ------------------------------------------------------------------ closing

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self._path}: closed")

    def close(self) -> None:
        """Write the counters and close the store; waiting threads return."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._ack_pending:
                    keys = self._take_pending()
                    self._counters.acked += len(keys)
                    self._counters_dirty = True
                    try:
                        with self._db_lock, self._db.transaction():
                            self._db.delete(keys)
                            self._db.set_counters(self._counters.to_json())
                        self._flushed()
                    except _DB_ERRORS as exc:
                        self._counters.acked -= len(keys)
                        logger.error("outbox %s: %d delivered messages could not be removed "
                                     "(%s); they will be sent again after the restart",
                                     self._path, len(keys), exc)
                if self._counters_dirty:
                    self._flush_counters()
            except OutboxError as exc:
                logger.error("%s", exc)
            finally:
                self._release_resources()
                self._cond.notify_all()

    def _release_resources(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with self._db_lock, contextlib.suppress(Exception):
                db.close()
        if self._lockfile is not None:
            with contextlib.suppress(OSError):
                self._lockfile.close()
            self._lockfile = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "DROP_REASONS",
    "Outbox",
    "OutboxError",
    "OutboxMessage",
    "OutboxStats",
    "strip_inline_media",
]
