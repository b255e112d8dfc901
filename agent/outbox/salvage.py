"""Corruption: setting a damaged outbox.db aside and saving what can be read from it."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from agent.outbox import db as dbfile
from agent.outbox.db import OutboxDb
from agent.outbox.records import _DB_ERRORS, _Counters
from agent.outbox.space import DiskSpace

logger = logging.getLogger(__name__)


class Salvage(DiskSpace):
    """Sets a corrupt ``outbox.db`` aside and salvages it (a part of ``Outbox``)."""

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
