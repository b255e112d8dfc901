"""The engine's state and hot path: events counted into groups, composites formed and closed."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import uuid
from collections.abc import Callable, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.events.schema import CompositeEvent, DeviceRef, Event, LabelName, new_event_id
from agent.rules.config import RuleConfig
from agent.rules.groups import (
    EPOCH,
    ONE_MS,
    Group,
    Item,
    Route,
    RouteKey,
    Rule,
    metadata_text,
)
from agent.rules.payload import Payloads

if TYPE_CHECKING:
    from agent.rules.state import RuleStore, StoredEvent

_COLLECT_EVERY_MS = 60_000
"""How often (engine time) calls that feed events also drop what time released."""


def _newest(tracks: dict[tuple[str, str], int], keep: int) -> dict[tuple[str, str], int]:
    """The ``keep`` tracks seen most recently (largest horizon), in their order."""
    cutoff = sorted(tracks.values())[-keep]
    newest = {k: u for k, u in tracks.items() if u > cutoff}
    for k, u in tracks.items():  # ties at the cutoff: the first ones kept
        if len(newest) >= keep:
            break
        if u == cutoff:
            newest[k] = u
    return newest


def _newest_ids(ids: dict[str, int], keep: int) -> dict[str, int]:
    """The ``keep`` ids counted last (insertion order is counting order)."""
    return dict(islice(ids.items(), len(ids) - keep, None))


def _has_media_bytes(event: Event) -> bool:
    audio, images = event.audio, event.images
    if audio is None and not images:
        return False
    if audio is not None and audio.data is not None:
        return True
    return any(m.data is not None for m in images)


class EngineCore:
    """What ``RuleEngine`` computes with: its rules and their groups, the deadlines of open
    composites, the table of counted event ids, and what the current call will hand out.

    ``_one`` counts one event; the transitions (form, extend, finalise, reset, collect) and
    the rule set's changes (``_apply``) work on that state. No locking and no persistence
    here: ``RuleEngine`` holds the lock, ``PersistentEngine`` reads and writes the state file.
    """

    def __init__(
        self,
        rules: list[RuleConfig],
        device: DeviceRef,
        clock: Clock,
        label_names: Callable[[str], LabelName | None] | None,
        *,
        max_events_per_composite: int,
        track_ttl_seconds: float,
        update_interval_seconds: float,
        max_tracked_ids: int,
        max_tracks: int,
    ) -> None:
        self._device = device
        self._clock = clock
        self._payloads = Payloads(device, label_names)
        self._cap = max_events_per_composite
        self._max_ids = max_tracked_ids
        # Trimmed back to the limit once this far over it: amortised O(1) per event.
        self._ids_slack = max(16, max_tracked_ids // 4)
        self._max_tracks = max_tracks
        self._tracks_slack = max(16, max_tracks // 4)
        self._track_ttl_ms = round(track_ttl_seconds * 1000)
        self._update_interval_ms = round(update_interval_seconds * 1000)
        # Open updates held back by ``update_interval_seconds``, and when each is due.
        self._owed: dict[Group, None] = {}
        self._owed_due: list[tuple[int, int, Group]] = []
        self._rules: dict[str, Rule] = {}
        for config in rules:
            self._rules[config.id] = self._new_rule(config)
        self._routes: dict[RouteKey, Route] = {}
        self._deadlines: list[tuple[int, int, Rule, Group, str]] = []
        self._counter = itertools.count()
        self._now = 0
        self._next_seq = 0
        # Counted event ids, oldest first: id -> bits of the rules that counted it. Bounded
        # by count (``max_tracked_ids``), not time: a copy with a later timestamp is still a
        # copy, whenever it comes.
        self._seen: dict[str, int] = {}
        self._max_window = 0
        # Engine now at which memory that time has released is next collected (``tick``
        # does it too; a dry run never ticks).
        self._next_collect = 0
        self._rules_changed()
        # Per call: composites finalised (in order) and composites left open, by id.
        self._finals: list[CompositeEvent] = []
        self._opened: dict[Group, None] = {}
        self._pending: list[CompositeEvent] = []
        # What the last call handed out: kept in the state file until the next call (the
        # caller's receipt) or ``close``, so a crash before the caller stored it repeats it.
        self._handed: list[CompositeEvent] = []
        # Replaying stored events: rebuild state, hand nothing out, store nothing.
        self._silent = False
        # Per commit: the events to store; snapshot bookkeeping.
        self._log: list[StoredEvent] = []
        self._pending_changed = False
        # Finals handed out or owed, not received yet: their members' sequence numbers (kept
        # in the state file) and whether the file holds any.
        self._final_seqs: dict[str, list[int]] = {}
        self._stored_finals = False
        self._force_snapshot = False
        self._events_since_snapshot = 0
        self._snapshot_min = 20_000  # events between snapshots, at least; replay replays these
        self._snapshot_after = self._snapshot_min
        # The state file, and its random seed for composite ids (``RuleEngine`` opens it).
        self._store: RuleStore | None = None
        self._seed: str | None = None

    # ------------------------------------------------------------------------ hot path

    def _one(self, event: Event) -> None:
        t = (event.timestamp - EPOCH) // ONE_MS
        now = self._now
        if t > now:
            now = self._now = t
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._finalize_due(now)
        label = event.label
        if label is None:
            return
        source = event.source
        route = self._routes.get((label.id, source.id, source.kind, event.use_case))
        if route is None:
            route = self._route((label.id, source.id, source.kind, event.use_case))
        if not route:
            return
        event_id = event.id
        seen = self._seen.get(event_id, 0)
        track = (source.id, event.track_id) if event.track_id is not None else None
        item: Item | None = None
        seq = -1  # allocated when the event first changes some rule's state
        mask = 0
        opened = self._opened
        for rule, group, group_key, meta_key, window, bit in route:
            if meta_key is not None:
                value = event.metadata.get(meta_key)
                if value is None:
                    continue
                group_key += value if type(value) is str else metadata_text(value)
            if t + window <= now:
                rule.late += 1
                continue
            if seen & bit:
                rule.duplicates += 1
                continue
            if track is not None:
                tracks = rule.tracks
                until = tracks.get(track)
                new_until = t + rule.track_horizon
                if until is not None and until > now:
                    if new_until > until:
                        tracks[track] = new_until
                        if seq < 0:
                            seq = self._next_seq
                            self._next_seq += 1
                    rule.repeats += 1
                    continue
                tracks[track] = new_until
                if len(tracks) > self._max_tracks + self._tracks_slack:
                    rule.tracks = _newest(tracks, self._max_tracks)
                if seq < 0:
                    seq = self._next_seq
                    self._next_seq += 1
            if group is None:
                group = rule.groups.get(group_key)
                if group is None:
                    group = rule.groups[group_key] = Group(group_key, rule)
            if t < group.cooldown_until:
                rule.suppressed += 1
                continue
            if item is None:
                if seq < 0:
                    seq = self._next_seq
                    self._next_seq += 1
                item = (t, seq, event.without_media() if _has_media_bytes(event) else event)
            mask |= bit
            if group.cid is not None:
                members = group.members
                if t >= group.newest:
                    members.append(item)  # in order: the common case
                    group.fresh.append(item)
                    group.newest = t
                else:
                    group.insert_late(item)
                group.updated = now
                rule.updated += 1
                if len(members) >= rule.cap:
                    self._finalize(rule, group, now, early=True)
                else:
                    opened[group] = None
                continue
            cand = group.cand
            heapq.heappush(cand, item)
            required = rule.required
            if required is not None:
                group.labels[label.id] = group.labels.get(label.id, 0) + 1
            if cand[0][0] + window <= now:
                self._prune(rule, group, now)
            if len(cand) > rule.cap and len(cand) > rule.min_events:
                self._overflow(rule, group)
            if len(cand) >= rule.min_events and (
                required is None or all(group.labels.get(r) for r in required)
            ):
                self._form(rule, group, now, seq)
        if seq < 0:
            return
        if item is not None:
            ids = self._seen
            if seen:  # a copy counted by rules that had not counted the original
                ids[event_id] = seen | mask
            else:
                ids[event_id] = mask
                if len(ids) > self._max_ids + self._ids_slack:
                    self._seen = _newest_ids(ids, self._max_ids)
        if not self._silent:
            stored = item[2] if item is not None else (
                event.without_media() if _has_media_bytes(event) else event)
            self._log.append((seq, now, stored))

    def _route(self, key: RouteKey) -> Route:
        route: Route = []
        for rule in self._rules.values():
            if rule.enabled and rule.passes(key):
                group_key = rule.group_key(key)
                group = None
                if rule.meta_key is None:  # kept while the route is (see ``_collect``)
                    group = rule.groups.get(group_key)
                    if group is None:
                        group = rule.groups[group_key] = Group(group_key, rule)
                route.append((rule, group, group_key, rule.meta_key, rule.window, rule.bit))
        self._routes[key] = route
        return route

    # --------------------------------------------------------------- group transitions

    def _prune(self, rule: Rule, group: Group, now: int) -> None:
        cand = group.cand
        window = rule.window
        while cand and cand[0][0] + window <= now:
            _t, _seq, event = heapq.heappop(cand)
            if rule.required is not None and event.label is not None:
                left = group.labels[event.label.id] - 1
                if left:
                    group.labels[event.label.id] = left
                else:
                    del group.labels[event.label.id]

    def _overflow(self, rule: Rule, group: Group) -> None:
        """Drop the oldest candidates beyond ``max(cap, min_events)`` (the rule's
        ``max_events``, else ``max_events_per_composite``):
        only a group waiting for a ``require_labels`` label gets there, and without this
        bound it would hold every event of its window."""
        cand = group.cand
        limit = max(rule.cap, rule.min_events)
        while len(cand) > limit:
            _t, _seq, event = heapq.heappop(cand)
            rule.dropped += 1
            if rule.required is not None and event.label is not None:
                left = group.labels[event.label.id] - 1
                if left:
                    group.labels[event.label.id] = left
                else:
                    del group.labels[event.label.id]

    def _form(self, rule: Rule, group: Group, now: int, seq: int) -> None:
        group.members = sorted(group.cand)
        group.fresh = list(group.members)
        group.cand = []
        group.labels = {}
        group.parts = ({}, {}, {})
        group.scanned = 0
        group.published = None
        group.cid = self._composite_id(rule, group.key, seq)
        group.started = group.members[0][0]
        group.newest = group.members[-1][0]
        group.updated = now
        rule.formed += 1
        heapq.heappush(
            self._deadlines,
            (group.newest + rule.window, next(self._counter), rule, group, group.cid),
        )
        if len(group.members) >= rule.cap:
            self._finalize(rule, group, now, early=True)
        else:
            self._opened[group] = None

    def _composite_id(self, rule: Rule, key: str, seq: int) -> str:
        """A fresh UUID v4; with a state file, derived from the file's random seed and the
        event that formed it, so that replay after a restart gives the same id."""
        if self._seed is None:
            return new_event_id()
        digest = hashlib.blake2b(
            f"{self._seed}\n{rule.id}\n{key}\n{seq}".encode(), digest_size=16
        ).digest()
        return str(uuid.UUID(bytes=digest, version=4))

    def _finalize_due(self, now: int) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _deadline, _n, rule, group, cid = heapq.heappop(deadlines)
            if group.cid != cid or not rule.active or rule.groups.get(group.key) is not group:
                continue
            ends = group.newest + rule.window
            if ends > now:  # extended since the deadline was pushed
                heapq.heappush(deadlines, (ends, next(self._counter), rule, group, cid))
                continue
            self._finalize(rule, group, ends, early=False)

    def _finalize(self, rule: Rule, group: Group, ended: int, *, early: bool) -> None:
        """Close the open composite of ``group``; ``ended`` is its ``ended_at``. A member of
        a composite closed early stays in the table of live ids, so a copy is still caught."""
        assert group.cid is not None
        group.updated = max(group.updated, self._now)
        if not self._silent:
            self._keep_members(group)
            self._finals.append(self._payloads.build(rule.ref, group, ended))
        self._opened.pop(group, None)
        group.members = []
        group.fresh = []
        group.parts = ({}, {}, {})
        group.scanned = 0
        group.cid = None
        if rule.cooldown > 0:
            group.cooldown_until = ended + rule.cooldown
        rule.finalized += 1

    def _keep_members(self, group: Group) -> None:
        """Note a closing composite's members: the state file keeps them (and a compact
        record of the final) until the caller's receipt, to hand the final out again after a
        crash. Open updates are not kept: after a restart the next update of each open
        composite carries every member anyway."""
        if self._store is not None and group.cid is not None:
            self._final_seqs[group.cid] = [it[1] for it in group.members]

    def _reset(self, rule: Rule, *, restart: bool = False) -> None:
        """Finalise a rule's open composites now and forget its windows (off, changed). On a
        restart a composite whose window passed meanwhile ends when it passed."""
        now = self._now
        for group in rule.groups.values():
            if group.cid is not None:
                group.updated = max(group.updated, now)
                ended = min(now, group.newest + rule.window) if restart else now
                self._keep_members(group)
                self._pending.append(self._payloads.build(rule.ref, group, ended))
                self._pending_changed = True
                self._opened.pop(group, None)
                rule.finalized += 1
        rule.groups = {}
        rule.tracks = {}
        keep = ~rule.bit
        self._seen = {k: m & keep for k, m in self._seen.items() if m & keep}

    def _collect(self) -> None:
        """Drop what has left every window: candidates, idle groups, tracks.

        Groups with a fixed key stay (the routes refer to them; there are no more of them
        than routes); ``metadata.<key>`` groups, as many as values seen, are dropped."""
        now = self._now
        self._next_collect = now + _COLLECT_EVERY_MS
        for rule in self._rules.values():
            window = rule.window
            empty = []
            dynamic = rule.meta_key is not None
            for key, group in rule.groups.items():
                if group.cid is None and group.cand and group.cand[0][0] + window <= now:
                    self._prune(rule, group, now)
                if dynamic and group.empty(now, window):
                    empty.append(key)
            for key in empty:
                del rule.groups[key]
            if rule.tracks:
                rule.tracks = {k: u for k, u in rule.tracks.items() if u > now}

    # ---------------------------------------------------------------------- bookkeeping

    def _new_rule(self, config: RuleConfig, others: Sequence[Rule] = ()) -> Rule:
        """A rule with a bit that neither the current rules nor ``others`` use."""
        used = 0
        for rule in (*self._rules.values(), *others):
            used |= rule.bit
        bit = 1
        while used & bit:
            bit <<= 1
        return Rule(config, self._device.id, self._track_ttl_ms, bit, self._cap)

    def _rules_changed(self) -> None:
        self._routes.clear()
        self._max_window = max((r.window for r in self._rules.values()), default=0)

    def _apply(self, rules: list[RuleConfig], *, restart: bool) -> None:
        """Switch to ``rules``: unchanged counting settings keep their windows. On a restart a
        rule must also be enabled in ``rules`` (the configuration decides at start)."""
        olds = self._rules
        self._rules = {}
        for config in rules:
            old = olds.pop(config.id, None)
            keeps = old is not None and old.fingerprint == config.window_fingerprint()
            if restart:
                keeps = keeps and old is not None and old.enabled and config.enabled
            if old is not None and keeps:
                if old.enabled and not config.enabled:
                    self._reset(old)
                old.configure(config)
                self._rules[config.id] = old
                continue
            if old is not None:
                self._reset(old, restart=restart)
                old.active = False
            self._rules[config.id] = self._new_rule(config, list(olds.values()))
        for old in olds.values():
            self._reset(old, restart=restart)
            old.active = False
        self._rules_changed()

    def _clock_ms(self) -> int:
        return round(self._clock.time() * 1000)

    def _advance_clock(self) -> None:
        clock_ms = self._clock_ms()
        if clock_ms > self._now:
            self._now = clock_ms

    def _catch_up(self) -> None:
        """Move time to the clock and finalise what is due, for calls that return nothing."""
        self._advance_clock()
        self._finalize_due(self._now)
        if self._finals:
            self._pending.extend(self._finals)
            self._pending_changed = True
            self._finals = []


__all__ = ["EngineCore"]
