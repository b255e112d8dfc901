"""The state shared by the parts of the outbox, and the wording of its errors."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path

from agent.clock import Clock
from agent.outbox.config import OutboxConfig
from agent.outbox.db import OutboxDb
from agent.outbox.records import OutboxError, OutboxMessage, _Counters, _Meta
from agent.outbox.summary import RepeatSummary


class OutboxBase:
    """What every part of ``Outbox`` shares: the state (declared here for the type checker,
    set in ``Outbox.__init__``), the wording of its errors and opening ``outbox.db``."""

    _config: OutboxConfig
    _clock: Clock
    _path: Path
    _lock: threading.Lock
    _db_lock: threading.Lock
    _closed: bool
    _meta: OrderedDict[int, _Meta]
    _ready: dict[str, deque[int]]
    _rr: OrderedDict[str, None]
    _claimed: set[int]
    _acking: dict[int, int]
    _acking_bytes: int
    _sheddable: deque[int]
    _recent: OrderedDict[int, OutboxMessage]
    _recent_bytes: int
    _bytes: int
    _counters: _Counters
    _counters_dirty: bool
    _counters_flushed: float
    _ack_pending: dict[int, int]
    _ack_pending_bytes: int
    _disk_cap: int
    _limit: int
    _space_checked: float
    _space_bytes: int
    _space_room: int
    _disk_full: bool
    _reserve_bytes: int
    _aside: list[tuple[Path, int]]
    _aside_bytes: int
    _corrupt: tuple[Path, str] | None
    _drop_log: RepeatSummary
    _error_log: RepeatSummary
    _db: OutboxDb

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

    def _open_db(self) -> OutboxDb:
        """The one place that opens ``outbox.db`` (new or existing)."""
        return OutboxDb(self._path, self._config.durability, self._reserve_bytes)

    def _stamp(self) -> str:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.time()))
