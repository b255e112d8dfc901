"""Counting what the outbox stores, acks and drops: counters, drop lines, stats."""

from __future__ import annotations

import contextlib

from agent.outbox.records import _DB_ERRORS, OutboxError, OutboxStats
from agent.outbox.space import DiskSpace

# Counters that change on every message (enqueued, acked) are written at most this often
# (seconds); drops are written with the transaction that drops.
_COUNTER_FLUSH_S = 1.0


class Accounting(DiskSpace):
    """The counters, written durably, and the log lines for drops (a part of ``Outbox``)."""

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
