"""The media store: every image and clip of an event, on disk, bounded in size and age.

Built on ``diskcache.Cache``, which is what this needs: a directory of files indexed by one
SQLite table, with expiry, values large enough to live in their own files, and writes that
stay consistent across processes and across a ``kill -9`` (a value's file is written before
the row that names it commits; a file without a row is removed by ``check`` at open).

Keys: ``m/{event_id}/{role}`` holds the bytes of one image or clip, ``i/{event_id}`` the
list of the event's media (role, content type, size, sha256, dimensions), written last so
that an event is listed only once all its media are stored. Every entry expires after
``media.retention`` seconds; when the store on disk (table, write-ahead log, files) would
exceed ``media.max_bytes``, the oldest entries go first. Both are counted in ``stats``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import sqlite3
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from agent.events.schema import Event, Media
from agent.fsmodes import private_dir, private_file
from agent.outbox.summary import RepeatSummary

logger = logging.getLogger(__name__)

INLINE_LIMIT = 1024
"""Values this size or larger get their own file; the index rows stay in the table."""

_META_KEYS = ("role", "content_type", "bytes", "sha256", "width", "height", "duration_s",
              "sample_rate")


class MediaMissing(LookupError):
    """Media asked for that the store does not hold (never stored, expired or evicted)."""


@dataclass(frozen=True)
class StoredMedia:
    """One image or clip read back from the store."""

    info: dict[str, Any]
    data: bytes

    @property
    def role(self) -> str:
        return str(self.info["role"])


def media_info(media: Media) -> dict[str, Any]:
    """What an event says about one image or clip, without its bytes."""
    dump = media.model_dump()
    return {k: dump[k] for k in _META_KEYS if dump.get(k) is not None}


def event_media(event: Event) -> list[Media]:
    """The event's images and clip that carry bytes."""
    found = [m for m in event.images if m.data is not None]
    if event.audio is not None and event.audio.data is not None:
        found.append(event.audio)
    return found


class MediaStore:
    """Images and clips of events on disk; thread-safe (``put`` from every worker thread,
    ``get`` from the command thread)."""

    def __init__(self, directory: Path, max_bytes: int, retention: float) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.retention = retention
        self._lock = threading.Lock()
        self.stored = 0
        self.evicted = 0
        self.expired = 0
        self.errors = 0
        self.repaired = 0
        self._failures = RepeatSummary(logger, "media not stored", time.monotonic,
                                       level=logging.ERROR)
        # 0700 whatever the umask: the value files diskcache creates below inherit the
        # umask, but nobody else can reach them through this directory.
        private_dir(self.directory)
        private_file(self.directory / diskcache.core.DBNAME)
        self._cache = diskcache.Cache(
            str(self.directory),
            # The bound is ours (see _evict): it counts the write-ahead log, diskcache's
            # size_limit does not, and culling there would not be counted.
            size_limit=2**62,
            cull_limit=0,
            eviction_policy="least-recently-stored",
            disk_min_file_size=INLINE_LIMIT,
            statistics=False,
            # A checkpoint every ~100 pages keeps the log small next to a small max_bytes.
            sqlite_wal_autocheckpoint=100,
            sqlite_journal_size_limit=512 * 1024,
        )
        self._repair()
        with self._lock:
            self._evict()

    def _repair(self) -> None:
        """Remove what a crash left half-done: files without a row, rows without a file."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._cache.check(fix=True)
            except (OSError, sqlite3.Error) as exc:
                logger.error("media store %s: check after start failed: %s; media may take "
                             "more room than counted until the store is emptied",
                             self.directory, exc)
        self.repaired = len(caught)
        if caught:
            logger.warning("media store %s: repaired %d leftover(s) of an unclean stop "
                           "(e.g. a file written just before a kill)", self.directory,
                           len(caught))

    # -- writing ----------------------------------------------------------------------------

    def put_event(self, event: Event) -> int:
        """Store the event's images and clip (those with bytes); returns how many.

        Never raises: a store that cannot write (disk full, broken file) costs the media of
        this event, counted in ``errors``, not the event.
        """
        media = event_media(event)
        if not media:
            return 0
        try:
            blobs = [(m, base64.b64decode(m.data or "", validate=True)) for m in media]
        except (binascii.Error, ValueError) as exc:
            self._fail(event.id, f"invalid base64: {exc}")
            return 0
        expire = self.retention
        try:
            with self._lock:
                # Room first, so the store stays within its bound even while writing.
                self._evict(sum(len(d) for _, d in blobs) + INLINE_LIMIT)
                for m, data in blobs:
                    self._cache.set(f"m/{event.id}/{m.role}", data, expire=expire)
                index = json.dumps([media_info(m) for m, _ in blobs])
                self._cache.set(f"i/{event.id}", index, expire=expire)
                self.stored += len(blobs)
                self._evict()
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            self._fail(event.id, str(exc))
            return 0
        return len(blobs)

    def _fail(self, event_id: str, why: str) -> None:
        with self._lock:
            self.errors += 1
        line = (f"media store {self.directory}: media of event {event_id} not stored "
                f"(counted in stats media.errors): {why}")
        self._failures.add("error", 1, lambda: line)

    def usage(self) -> int:
        """Bytes the store takes on disk: its table file (or its logical size, when the log
        still holds pages the file has yet to take), the write-ahead log and its index, and
        every value file."""
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes[suffix] = (self.directory / f"{diskcache.core.DBNAME}{suffix}").stat(
                ).st_size
            except OSError:
                sizes[suffix] = 0
        (pages,) = self._cache._sql("PRAGMA page_count").fetchone()
        table = max(sizes[""], pages * self._cache._page_size)
        return table + sizes["-wal"] + sizes["-shm"] + int(self._cache.reset("size"))

    def _evict(self, incoming: int = 0) -> None:
        """Under the lock: drop the oldest entries until the store fits ``max_bytes`` with
        ``incoming`` more bytes."""
        while self.usage() + incoming > self.max_bytes:
            key = next(iter(self._cache), None)
            if key is None:
                # Only the table and its log are left: a checkpoint is all that can help.
                with contextlib.suppress(sqlite3.Error):
                    self._cache._sql("PRAGMA wal_checkpoint(TRUNCATE)")
                return
            if self._cache.delete(key) and str(key).startswith("m/"):
                self.evicted += 1

    def expire(self) -> int:
        """Remove media older than ``retention``; returns how many (call now and then)."""
        try:
            with self._lock:
                (gone,) = self._cache._sql(
                    "SELECT COUNT(*) FROM Cache WHERE expire_time < ? AND key LIKE 'm/%'",
                    (time.time(),)).fetchone()
                self._cache.expire()
                self.expired += gone
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            logger.error("media store %s: cannot remove expired media: %s", self.directory, exc)
            return 0
        self._failures.tick()
        return int(gone)

    # -- reading ----------------------------------------------------------------------------

    def get(self, event_id: str, role: str | None = None) -> list[StoredMedia]:
        """The media of ``event_id`` (one ``role`` or all), or ``MediaMissing`` saying why."""
        raw = self._cache.get(f"i/{event_id}")
        if raw is None:
            raise MediaMissing(
                f"no media for event {event_id} on this device: never stored, or older than "
                f"media.retention ({self.retention:g} s), or evicted to stay within "
                f"media.max_bytes")
        infos: list[dict[str, Any]] = json.loads(raw)
        roles = [str(i["role"]) for i in infos]
        if role is not None:
            infos = [i for i in infos if i["role"] == role]
            if not infos:
                raise MediaMissing(f"event {event_id} has no media with role {role} "
                                   f"(it has: {', '.join(roles)})")
        found: list[StoredMedia] = []
        for info in infos:
            data = self._cache.get(f"m/{event_id}/{info['role']}")
            if data is None:
                raise MediaMissing(f"media {info['role']} of event {event_id} is no longer "
                                   f"on this device (evicted to stay within media.max_bytes "
                                   f"or expired)")
            found.append(StoredMedia(info, bytes(data)))
        return found

    def stats(self) -> dict[str, Any]:
        """For the stats document: what the store holds and what it let go."""
        with self._lock:
            try:
                usage = self.usage()
                (items,) = self._cache._sql(
                    "SELECT COUNT(*) FROM Cache WHERE key LIKE 'i/%'").fetchone()
            except (OSError, sqlite3.Error):
                usage, items = -1, -1
            return {"events": items, "bytes": usage, "max_bytes": self.max_bytes,
                    "stored": self.stored, "evicted": self.evicted, "expired": self.expired,
                    "errors": self.errors}

    def close(self) -> None:
        self._cache.close()
