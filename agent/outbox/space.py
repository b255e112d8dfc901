"""Disk pressure: free-space limits, the reserve file and set-aside corrupt files."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from agent.outbox import db as dbfile
from agent.outbox.base import OutboxBase
from agent.outbox.records import _DB_ERRORS

logger = logging.getLogger(__name__)

# Released when the file system runs short, so that deleting (which needs room in the WAL)
# and checkpointing always can; made again once there is room.
RESERVE_NAME = "outbox.reserve"
# Free space is measured at most this often (seconds), and sooner once the outbox has grown
# by half of the room the last measurement left.
_SPACE_CHECK_S = 1.0
# Bytes on disk per byte counted against max_bytes, at worst (SQLite's page fill, 1 KB rows).
_DISK_PER_BYTE = 1.3


class DiskSpace(OutboxBase):
    """Keeps the outbox within the room its file system has (a part of ``Outbox``)."""

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
