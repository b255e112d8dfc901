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

This module keeps the queue's core (open, put, claim, ack, release, close); ``Outbox``'s
other jobs are mixins beside it, over the state declared in ``agent.outbox.base``:
``index`` (the in-memory index), ``space`` (disk pressure), ``accounting`` (counters, drop
lines, stats), ``bounds`` (``on_full`` and ``ttl``), ``salvage`` (a corrupt ``outbox.db``)
and ``migrate`` (version 0.1's ``cache.db``). The types are in ``agent.outbox.records``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from agent.clock import Clock, SystemClock
from agent.fsmodes import private_dir, private_file
from agent.outbox import db as dbfile
from agent.outbox.bounds import Bounds, _Plan, strip_inline_media
from agent.outbox.config import OutboxConfig
from agent.outbox.db import NewRow, OutboxDb
from agent.outbox.migrate import Migration
from agent.outbox.records import (
    _DB_ERRORS,
    DROP_REASONS,
    OutboxError,
    OutboxMessage,
    OutboxStats,
    _Counters,
    _Meta,
    _size,
)
from agent.outbox.salvage import Salvage
from agent.outbox.space import RESERVE_NAME  # noqa: F401 (importable from here, as before)
from agent.outbox.summary import RepeatSummary

logger = logging.getLogger(__name__)

_LOCK_NAME = "outbox.lock"
_NO_KEYS: list[int] = []  # shared: no keys (never modified)


class Outbox(Bounds, Salvage, Migration):
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
