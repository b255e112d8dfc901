"""Keeping the outbox within its bounds: what to drop or shed when full, and ttl."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agent.outbox import db as dbfile
from agent.outbox.accounting import Accounting
from agent.outbox.index import Index
from agent.outbox.records import _DB_ERRORS, _Counters


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


class Bounds(Accounting, Index):
    """Makes room by ``on_full`` and drops what outlived ``ttl`` (a part of ``Outbox``)."""

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
