"""The 0.1 migration: moving the messages of a diskcache cache.db into outbox.db."""

from __future__ import annotations

import logging

from agent.outbox import db as dbfile
from agent.outbox.records import _DB_ERRORS, OutboxError
from agent.outbox.space import DiskSpace

logger = logging.getLogger(__name__)


class Migration(DiskSpace):
    """Moves an earlier version's store into ``outbox.db`` on open (a part of ``Outbox``)."""

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
