"""The rule engine: base events in, composite events out (semantics in ``docs/rules.md``).

Each rule keeps its groups; a group is either idle (candidate events, pruned as they leave the
window) or open (the members of one composite event, growing until ``window_seconds`` pass
without a new one). Times are whole milliseconds; the engine's *now* is the larger of the
injected clock and the newest event time seen, and never goes backwards, so a replay with a
clock that stands still gives the same result as one that follows event time.

Hot path notes: an event is routed to the rules whose static filters (label, source, kind,
use case) it passes through a cache keyed by those four values, and every group key except
``metadata.<key>`` ones is precomputed in that cache, so a rule that does not match costs
nothing and a rule that does costs a few dictionary and heap operations.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from bisect import insort
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.events.schema import (
    CompositeEvent,
    DeviceRef,
    Event,
    Label,
    LabelName,
    LabelState,
    MetadataValue,
    RuleRef,
    SourceRef,
    new_event_id,
)
from agent.rules.config import RuleConfig, check_unique_ids
from agent.rules.state import RuleStore, pack_seqs, unpack_seqs

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)

Item = tuple[int, int, Event]
"""An admitted event: (event time in ms, sequence number, the event without media bytes)."""

RouteKey = tuple[str, str, str, str]
Route = list[tuple["_Rule", str, "str | None"]]


def to_ms(value: datetime) -> int:
    """An aware datetime as whole milliseconds since the epoch (exact integer arithmetic)."""
    return (value - _EPOCH) // _ONE_MS


def from_ms(ms: int) -> datetime:
    """Whole milliseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def metadata_text(value: MetadataValue) -> str:
    """How a metadata value appears in a group key (booleans as JSON writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _has_media_bytes(event: Event) -> bool:
    if event.audio is not None and event.audio.data is not None:
        return True
    return any(m.data is not None for m in event.images)


class _Group:
    """One group of one rule: idle (candidates) or open (members of one composite)."""

    __slots__ = (
        "appended",
        "cand",
        "cid",
        "cooldown_until",
        "dirty",
        "full",
        "ids",
        "key",
        "labels",
        "members",
        "newest",
        "parts",
        "published",
        "rule",
        "spent",
        "spent_ids",
        "started",
        "updated",
    )

    def __init__(self, key: str, rule: _Rule) -> None:
        self.key = key
        self.rule = rule
        self.cid: str | None = None
        self.started = 0
        self.newest = 0
        self.updated = 0
        self.members: list[Item] = []  # sorted by (time, seq) while open
        self.cand: list[Item] = []  # a heap by (time, seq) while idle
        self.ids: set[str] = set()  # ids of members and candidates, against duplicates
        self.labels: dict[str, int] = {}  # label counts among candidates (require_labels)
        self.cooldown_until = 0
        # Members of a composite closed early (max_events_per_composite) that are still
        # inside the window: kept so a redelivered copy is not counted again.
        self.spent: list[Item] = []
        self.spent_ids: set[str] = set()
        # The open composite's microphones, cameras and labels, kept as members join so a
        # payload costs no scan of the members.
        self.parts: tuple[dict[str, SourceRef], dict[str, SourceRef], dict[str, Label]] = (
            {}, {}, {})
        self.published: int | None = None  # engine now of the last open payload handed out
        self.dirty = False
        self.full = False
        self.appended: list[int] = []

    def empty(self, now: int, window: int) -> bool:
        return (
            self.cid is None
            and not self.cand
            and not self.spent
            and self.cooldown_until + window <= now
        )

    def join(self, event: Event) -> None:
        """Note a member's source and label for the payload."""
        mics, cameras, labels = self.parts
        source = event.source
        if source.kind == "microphone":
            if source.id not in mics:
                mics[source.id] = source
        elif source.kind == "camera" and source.id not in cameras:
            cameras[source.id] = source
        label = event.label
        if label is not None and label.id not in labels:
            labels[label.id] = label

    def dump(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "st": self.started,
            "nw": self.newest,
            "up": self.updated,
            "m": pack_seqs([it[1] for it in self.members]),
            "c": pack_seqs([it[1] for it in self.cand]),
            "cd": self.cooldown_until,
            "sp": pack_seqs([it[1] for it in self.spent]),
        }


class _Rule:
    """A rule's compiled settings, its groups, track memory and counters."""

    def __init__(self, config: RuleConfig, device_id: str, track_ttl_ms: int) -> None:
        self.groups: dict[str, _Group] = {}
        self.tracks: dict[tuple[str, str], int] = {}
        self.active = True
        self.formed = self.updated = self.finalized = 0
        self.late = self.duplicates = self.repeats = self.suppressed = 0
        self.device_id = device_id
        self.track_ttl_ms = track_ttl_ms
        self.configure(config)

    def configure(self, config: RuleConfig) -> None:
        self.config = config
        self.id = config.id
        self.ref: RuleRef = config.to_ref()
        self.enabled = config.enabled
        self.fingerprint = config.window_fingerprint()
        self.window = round(config.window_seconds * 1000)
        self.cooldown = round(config.cooldown_seconds * 1000)
        self.min_events = config.min_events
        self.required: tuple[str, ...] | None = (
            tuple(sorted(set(config.require_labels))) if config.require_labels else None
        )
        self.meta_key = config.metadata_key
        # Track memory lasts at least a window, so a redelivered event is never "first seen".
        self.track_horizon = max(self.track_ttl_ms, self.window)
        self.labels_in = set(config.include_label_ids) if config.include_label_ids is not None \
            else None
        self.mics_in = set(config.include_mic_ids) if config.include_mic_ids is not None else None
        self.cams_in = set(config.include_camera_ids) if config.include_camera_ids is not None \
            else None
        self.use_cases_in = set(config.include_use_cases) \
            if config.include_use_cases is not None else None

    def passes(self, key: RouteKey) -> bool:
        """Whether events with this label, source, kind and use case count for the rule."""
        label_id, source_id, kind, use_case = key
        if self.labels_in is not None and label_id not in self.labels_in:
            return False
        if kind == "microphone" and self.mics_in is not None and source_id not in self.mics_in:
            return False
        if kind == "camera" and self.cams_in is not None and source_id not in self.cams_in:
            return False
        return self.use_cases_in is None or use_case in self.use_cases_in

    def group_key(self, key: RouteKey) -> str:
        """The group key for fixed strategies; the prefix for ``metadata.<key>``."""
        label_id, source_id, _kind, use_case = key
        dev = self.device_id
        strategy = self.config.group_by
        if strategy == "label_id":
            return f"{dev}:{label_id}"
        if strategy == "source_id":
            return f"{dev}:{source_id}"
        if strategy == "label_and_source":
            return f"{dev}:{label_id}:{source_id}"
        if strategy == "use_case":
            return f"{dev}:{use_case}"
        if strategy == "device":
            return dev
        if strategy == "none":
            return f"{dev}:all"
        return f"{dev}:"


class RuleEngine:
    """Computes composite events from base events, on the device.

    ``process``/``process_many`` return the composite events their events formed, extended or
    (by moving time on) finalised; ``tick`` returns those that became final as time passed.
    Within one call each composite appears once, in its latest state. With a ``state_dir``,
    every call commits what changed before it returns, so a restart neither loses nor double
    counts what is inside open windows. Thread-safe (one lock).

    ``max_events_per_composite`` bounds a composite that a steady stream would otherwise
    extend forever; ``track_ttl_seconds`` is how long a rule remembers an object or sound
    (``track_id``) after its last event, so later phases of it are not counted again;
    ``update_interval_seconds`` rate-limits the open updates of one composite (formation and
    final are never held back).
    """

    def __init__(
        self,
        rules: list[RuleConfig],
        device: DeviceRef,
        clock: Clock,
        state_dir: Path | None = None,
        label_names: Callable[[str], LabelName | None] | None = None,
        *,
        max_events_per_composite: int = 1000,
        track_ttl_seconds: float = 300.0,
        update_interval_seconds: float = 1.0,
    ) -> None:
        problems = check_unique_ids(rules)
        if problems:
            raise ValueError("; ".join(problems))
        if max_events_per_composite < 1:
            raise ValueError("max_events_per_composite must be at least 1")
        self._device = device
        self._clock = clock
        self._label_names = label_names
        self._cap = max_events_per_composite
        self._track_ttl_ms = round(track_ttl_seconds * 1000)
        self._update_interval_ms = round(update_interval_seconds * 1000)
        self._owed: dict[_Group, None] = {}
        self._lock = threading.RLock()
        self._rules: dict[str, _Rule] = {
            c.id: _Rule(c, device.id, self._track_ttl_ms) for c in rules
        }
        self._routes: dict[RouteKey, Route] = {}
        self._label_states: dict[str, LabelState] = {}
        self._deadlines: list[tuple[int, int, _Rule, _Group, str]] = []
        self._counter = itertools.count()
        self._now = 0
        self._next_seq = 0
        # Per call: composites finalised (in order) and composites left open, by id.
        self._finals: list[CompositeEvent] = []
        self._opened: dict[_Group, None] = {}
        self._pending: list[CompositeEvent] = []
        # Per commit: what changed since the last one.
        self._dirty: list[tuple[_Rule, _Group]] = []
        self._dirty_tracks: dict[tuple[str, str, str], int] = {}
        self._new_items: list[Item] = []
        self._force_snapshot = False
        self._pending_delivered = False
        self._events_since_snapshot = 0
        self._snapshot_after = 20_000
        self._store = RuleStore(state_dir) if state_dir is not None else None
        self._closed = False
        if self._store is not None:
            self._restore(self._store)

    # ----------------------------------------------------------------- public interface

    def process(self, event: Event) -> list[CompositeEvent]:
        """Feed one base event; the composite events it formed, extended or finalised."""
        return self.process_many((event,))

    def process_many(self, events: Sequence[Event]) -> list[CompositeEvent]:
        """Feed base events in arrival order; one commit for the whole batch.

        Equivalent to calling ``process`` on each in turn, except that each composite appears
        at most once in the result, in its latest state.
        """
        with self._lock:
            self._check_open()
            self._advance_clock()
            one = self._one
            for event in events:
                one(event)
            return self._finish()

    def tick(self) -> list[CompositeEvent]:
        """Finalise composites whose window has passed by the clock; the daemon calls ~1/s."""
        with self._lock:
            self._check_open()
            self._advance_clock()
            self._finalize_due(self._now)
            self._collect()
            return self._finish()

    def set_enabled(self, rule_id: str, enabled: bool) -> None:
        """Switch a rule on or off at runtime (not persisted: the configuration decides at start).

        Switching off finalises its open composites (returned by the next call) and forgets
        its windows; switching on starts with empty windows. ``KeyError`` for an unknown id.
        """
        with self._lock:
            self._check_open()
            rule = self._rules[rule_id]
            if rule.enabled == enabled:
                return
            self._catch_up()
            if not enabled:
                self._reset(rule)
            rule.enabled = enabled
            rule.ref = rule.ref.model_copy(update={"enabled": enabled})
            self._routes.clear()
            self._force_snapshot = True
            self._commit()

    def reload(self, rules: list[RuleConfig]) -> None:
        """Replace the rules. A rule whose counting settings are unchanged keeps its windows
        (a new name or description is used from now on); a changed or removed rule has its
        open composites finalised (returned by the next call) and starts afresh."""
        problems = check_unique_ids(rules)
        if problems:
            raise ValueError("; ".join(problems))
        with self._lock:
            self._check_open()
            self._catch_up()
            new: dict[str, _Rule] = {}
            for config in rules:
                old = self._rules.pop(config.id, None)
                if old is not None and old.fingerprint == config.window_fingerprint():
                    if old.enabled and not config.enabled:
                        self._reset(old)
                    old.configure(config)
                    new[config.id] = old
                    continue
                if old is not None:
                    self._reset(old)
                    old.active = False
                new[config.id] = _Rule(config, self._device.id, self._track_ttl_ms)
            for old in self._rules.values():
                self._reset(old)
                old.active = False
            self._rules = new
            self._routes.clear()
            self._force_snapshot = True
            self._commit()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per rule: formed, updated, finalized, open_groups, events_in_windows, and the
        events it set aside: late, duplicates, repeats (later phases of a counted track),
        suppressed (cooldown)."""
        with self._lock:
            now = max(self._now, self._clock_ms())
            out: dict[str, dict[str, int]] = {}
            for rule in self._rules.values():
                open_groups = 0
                in_windows = 0
                for group in rule.groups.values():
                    if group.cid is not None:
                        open_groups += 1
                        in_windows += len(group.members)
                    else:
                        in_windows += sum(1 for it in group.cand if it[0] + rule.window > now)
                out[rule.id] = {
                    "formed": rule.formed,
                    "updated": rule.updated,
                    "finalized": rule.finalized,
                    "open_groups": open_groups,
                    "events_in_windows": in_windows,
                    "late": rule.late,
                    "duplicates": rule.duplicates,
                    "repeats": rule.repeats,
                    "suppressed": rule.suppressed,
                }
            return out

    def close(self) -> None:
        """Release the state file; the engine cannot be used afterwards. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._store is not None:
                self._store.close()

    # ------------------------------------------------------------------------ hot path

    def _one(self, event: Event) -> None:
        label = event.label
        t = to_ms(event.timestamp)
        if t > self._now:
            self._now = t
        now = self._now
        if self._deadlines and self._deadlines[0][0] <= now:
            self._finalize_due(now)
        if label is None:
            return
        source = event.source
        route_key = (label.id, source.id, source.kind, event.use_case)
        route = self._routes.get(route_key)
        if route is None:
            route = self._route(route_key)
        if not route:
            return
        item: Item | None = None
        event_id = event.id
        track = (source.id, event.track_id) if event.track_id is not None else None
        source_id, kind, label_id = source.id, source.kind, label.id
        dirty, opened, cap = self._dirty, self._opened, self._cap
        for rule, group_key, meta_key in route:
            if meta_key is not None:
                value = event.metadata.get(meta_key)
                if value is None:
                    continue
                group_key += value if type(value) is str else metadata_text(value)
            window = rule.window
            if t + window <= now:
                rule.late += 1
                continue
            group = rule.groups.get(group_key)
            if group is not None and (event_id in group.ids or event_id in group.spent_ids):
                rule.duplicates += 1
                continue
            if track is not None:
                until = rule.tracks.get(track)
                new_until = t + rule.track_horizon
                if until is not None and until > now:
                    if new_until > until:
                        rule.tracks[track] = new_until
                        self._dirty_tracks[(rule.id, *track)] = new_until
                    rule.repeats += 1
                    continue
                rule.tracks[track] = new_until
                self._dirty_tracks[(rule.id, *track)] = new_until
            if group is None:
                group = rule.groups[group_key] = _Group(group_key, rule)
                group.full = True  # written whole: a group of that key may have been dropped
            if t < group.cooldown_until:
                rule.suppressed += 1
                continue
            if item is None:
                item = self._admit(event, t)
            group.ids.add(event_id)
            if not group.dirty:
                group.dirty = True
                dirty.append((rule, group))
            group.appended.append(item[1])
            if group.cid is not None:
                members = group.members
                if t >= group.newest:
                    members.append(item)  # in order: the common case
                    group.newest = t
                else:
                    insort(members, item)
                    if t < group.started:  # a late event can start the composite earlier
                        group.started = t
                parts = group.parts
                if kind == "microphone":
                    if source_id not in parts[0]:
                        parts[0][source_id] = source
                elif kind == "camera" and source_id not in parts[1]:
                    parts[1][source_id] = source
                if label_id not in parts[2]:
                    parts[2][label_id] = label
                group.updated = now
                rule.updated += 1
                if len(members) >= cap:
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
            if len(cand) >= rule.min_events and (
                required is None or all(group.labels.get(r) for r in required)
            ):
                self._form(rule, group, now)

    def _admit(self, event: Event, t: int) -> Item:
        seq = self._next_seq
        self._next_seq += 1
        item = (t, seq, event.without_media() if _has_media_bytes(event) else event)
        self._new_items.append(item)
        return item

    def _route(self, key: RouteKey) -> Route:
        route: Route = []
        for rule in self._rules.values():
            if rule.enabled and rule.passes(key):
                route.append((rule, rule.group_key(key), rule.meta_key))
        self._routes[key] = route
        return route

    # --------------------------------------------------------------- group transitions

    def _prune(self, rule: _Rule, group: _Group, now: int) -> None:
        cand = group.cand
        window = rule.window
        while cand and cand[0][0] + window <= now:
            _t, _seq, event = heapq.heappop(cand)
            group.ids.discard(event.id)
            if rule.required is not None and event.label is not None:
                left = group.labels[event.label.id] - 1
                if left:
                    group.labels[event.label.id] = left
                else:
                    del group.labels[event.label.id]

    def _form(self, rule: _Rule, group: _Group, now: int) -> None:
        group.members = sorted(group.cand)
        group.cand = []
        group.labels = {}
        group.parts = ({}, {}, {})
        for it in group.members:
            group.join(it[2])
        group.published = None
        group.cid = new_event_id()
        group.started = group.members[0][0]
        group.newest = group.members[-1][0]
        group.updated = now
        group.full = True
        rule.formed += 1
        heapq.heappush(
            self._deadlines,
            (group.newest + rule.window, next(self._counter), rule, group, group.cid),
        )
        if len(group.members) >= self._cap:
            self._finalize(rule, group, now, early=True)
        else:
            self._opened[group] = None

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

    def _finalize(self, rule: _Rule, group: _Group, ended: int, *, early: bool) -> None:
        """Close the open composite of ``group``; ``ended`` is its ``ended_at``."""
        assert group.cid is not None
        group.updated = max(group.updated, self._now)
        self._finals.append(self._build(rule.ref, group, ended))
        self._opened.pop(group, None)
        # While open a group has no candidates, so its ids are exactly the members'.
        if early:
            if group.spent:  # drop what has left the window, so this list stays bounded
                window = rule.window
                group.spent = [it for it in group.spent if it[0] + window > self._now]
                group.spent_ids = {it[2].id for it in group.spent}
            group.spent.extend(group.members)
            group.spent_ids |= group.ids
        group.ids = set()
        group.members = []
        group.parts = ({}, {}, {})
        group.cid = None
        if rule.cooldown > 0:
            group.cooldown_until = ended + rule.cooldown
        group.full = True
        if not group.dirty:
            group.dirty = True
            self._dirty.append((rule, group))
        rule.finalized += 1

    def _reset(self, rule: _Rule) -> None:
        """Finalise a rule's open composites now and forget its windows (off, changed)."""
        for group in rule.groups.values():
            if group.cid is not None:
                group.updated = max(group.updated, self._now)
                self._pending.append(self._build(rule.ref, group, self._now))
                self._opened.pop(group, None)
                rule.finalized += 1
        rule.groups = {}
        rule.tracks = {}

    def _build(self, ref: RuleRef, group: _Group, ended: int | None) -> CompositeEvent:
        assert group.cid is not None
        mics, cameras, labels = group.parts
        # Built without re-validating: every part is already a validated model.
        return CompositeEvent.model_construct(
            id=group.cid,
            group_key=group.key,
            rule=ref,
            device=self._device,
            events=[it[2] for it in group.members],
            mics=list(mics.values()),
            cameras=list(cameras.values()),
            labels=[self._label_state(label) for label in labels.values()],
            started_at=from_ms(group.started),
            updated_at=from_ms(group.updated),
            ended_at=None if ended is None else from_ms(ended),
            status="open" if ended is None else "final",
        )

    def _label_state(self, label: Label) -> LabelState:
        state = self._label_states.get(label.id)
        if state is None:
            name = self._label_names(label.id) if self._label_names is not None else None
            state = LabelState(id=label.id, name=name or label.name, active=True)
            self._label_states[label.id] = state
        return state

    def _collect(self) -> None:
        """Drop what has left every window: candidates, spent ids, idle groups, tracks."""
        now = self._now
        for rule in self._rules.values():
            window = rule.window
            empty = []
            for key, group in rule.groups.items():
                if group.cid is None and group.cand and group.cand[0][0] + window <= now:
                    self._prune(rule, group, now)
                if group.spent:
                    group.spent = [it for it in group.spent if it[0] + window > now]
                    group.spent_ids = {it[2].id for it in group.spent}
                if group.empty(now, window):
                    empty.append(key)
            for key in empty:
                del rule.groups[key]
            if rule.tracks:
                rule.tracks = {k: u for k, u in rule.tracks.items() if u > now}

    # ---------------------------------------------------------------------- bookkeeping

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the rule engine is closed")

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
        self._pending.extend(self._finals)
        self._finals = []

    def _finish(self) -> list[CompositeEvent]:
        out = self._pending
        out.extend(self._finals)
        if self._owed:
            self._opened = {**self._owed, **self._opened}
            self._owed = {}
        now = self._now
        interval = self._update_interval_ms
        for group in self._opened:
            rule = group.rule
            if group.cid is None or not rule.active or rule.groups.get(group.key) is not group:
                continue
            if group.published is not None and now - group.published < interval:
                self._owed[group] = None  # handed out by a later call
                continue
            group.published = now
            out.append(self._build(rule.ref, group, None))
        if self._pending:
            self._pending_delivered = True
        self._pending = []
        self._finals = []
        self._opened = {}
        self._commit()
        return out

    def _commit(self) -> None:
        store = self._store
        if store is None:
            for _rule, group in self._dirty:
                group.dirty = group.full = False
                group.appended = []
            self._dirty = []
            self._dirty_tracks = {}
            self._new_items = []
            return
        self._events_since_snapshot += len(self._new_items)
        if (
            self._force_snapshot
            or self._events_since_snapshot > self._snapshot_after
            or store.rows_since_snapshot >= 5000
        ):
            self._snapshot(store)
            return
        if not (self._dirty or self._dirty_tracks or self._new_items or self._pending_delivered):
            return
        deltas: list[list[Any]] = []
        for rule, group in self._dirty:
            if group.full:
                deltas.append([rule.id, group.key, "=", group.dump()])
            elif group.appended:
                deltas.append([rule.id, group.key, "+", pack_seqs(group.appended)])
            group.dirty = group.full = False
            group.appended = []
        header = {
            "now": self._now,
            "seq": self._next_seq,
            "ev": pack_seqs([it[1] for it in self._new_items]),
            "g": deltas,
            "t": [[*k, u] for k, u in self._dirty_tracks.items()],
            "pd": self._pending_delivered,
        }
        self._pending_delivered = False
        store.append(header, [it[2].to_json() for it in self._new_items], snapshot=False)
        self._dirty = []
        self._dirty_tracks = {}
        self._new_items = []

    def _snapshot(self, store: RuleStore) -> None:
        self._collect()
        live: dict[int, Event] = {}
        groups: list[list[Any]] = []
        tracks: list[list[Any]] = []
        for rule in self._rules.values():
            for group in rule.groups.values():
                for it in group.members:
                    live[it[1]] = it[2]
                for it in (*group.cand, *group.spent):
                    live[it[1]] = it[2]
                groups.append([rule.id, group.key, group.dump()])
            tracks.extend([rule.id, s, k, u] for (s, k), u in rule.tracks.items())
        header = {
            "now": self._now,
            "seq": self._next_seq,
            "ev": pack_seqs(live),
            "g": groups,
            "t": tracks,
            "rules": {
                r.id: {"fp": r.fingerprint, "ref": r.ref.model_dump(mode="json")}
                for r in self._rules.values()
                if r.enabled
            },
            "pending": [c.model_dump(mode="json") for c in self._pending],
        }
        self._pending_delivered = False
        store.append(header, [e.to_json() for e in live.values()], snapshot=True)
        for _rule, group in self._dirty:
            group.dirty = group.full = False
            group.appended = []
        self._dirty = []
        self._dirty_tracks = {}
        self._new_items = []
        self._force_snapshot = False
        self._events_since_snapshot = 0
        self._snapshot_after = max(20_000, 2 * len(live))

    def _restore(self, store: RuleStore) -> None:
        loaded = store.load()
        self._now = max(loaded.now, self._clock_ms())
        self._next_seq = loaded.next_seq
        self._pending = [CompositeEvent.model_validate(c) for c in loaded.pending]
        items: dict[int, Item] = {}

        def item(seq: int) -> Item | None:
            found = items.get(seq)
            if found is None:
                raw = loaded.events.get(seq)
                if raw is None:
                    logger.warning("rules state: event #%d is missing; it is left out", seq)
                    return None
                event = Event.model_validate_json(raw)
                found = items[seq] = (to_ms(event.timestamp), seq, event)
            return found

        def items_of(packed: str) -> list[Item]:
            return sorted(it for it in map(item, unpack_seqs(packed)) if it is not None)

        dropped = 0
        for (rule_id, key), state in loaded.groups.items():
            rule = self._rules.get(rule_id)
            meta = loaded.rules.get(rule_id)
            group = _Group(key, rule)  # type: ignore[arg-type]
            group.cid = state["cid"]
            group.started, group.newest, group.updated = state["st"], state["nw"], state["up"]
            group.cooldown_until = state["cd"]
            group.members = items_of(state["m"]) if group.cid else []
            if not group.members:
                group.cid = None
            kept = (
                rule is not None
                and rule.enabled
                and meta is not None
                and meta["fp"] == rule.fingerprint
            )
            if not kept:
                if group.cid is not None and meta is not None:
                    # Closed now, as switching the rule off would; or when its window passed,
                    # if that came first.
                    ends = min(self._now, group.members[-1][0] + round(
                        meta["ref"]["window_seconds"] * 1000))
                    group.updated = max(group.updated, self._now)
                    ref = RuleRef.model_validate(meta["ref"])
                    self._pending.append(self._build(ref, group, ends))
                dropped += 1
                continue
            assert rule is not None
            group.cand = items_of(state["c"]) if group.cid is None else []
            group.spent = items_of(state["sp"])
            group.spent_ids = {it[2].id for it in group.spent}
            for it in group.members:
                group.join(it[2])
            for it in (*group.members, *group.cand):
                group.ids.add(it[2].id)
                label = it[2].label
                if group.cid is None and rule.required is not None and label is not None:
                    group.labels[label.id] = group.labels.get(label.id, 0) + 1
            if group.cid is not None:
                # Derived from the members: "+" rows do not rewrite them.
                group.started = group.members[0][0]
                group.newest = group.members[-1][0]
                heapq.heappush(
                    self._deadlines,
                    (group.newest + rule.window, next(self._counter), rule, group, group.cid),
                )
            rule.groups[key] = group
        for (rule_id, source_id, track_id), until in loaded.tracks.items():
            rule = self._rules.get(rule_id)
            meta = loaded.rules.get(rule_id)
            if rule is not None and rule.enabled and meta and meta["fp"] == rule.fingerprint:
                rule.tracks[(source_id, track_id)] = until
        if dropped:
            logger.warning(
                "rules state: %d groups of rules that changed, were removed or are disabled "
                "since the last run were discarded (open composites are closed)", dropped
            )
        if loaded.rows:
            logger.info(
                "rules state: restored %d groups and %d events from %s",
                sum(len(r.groups) for r in self._rules.values()), len(items), store.path,
            )
        # Start the journal afresh from what is live now (also records the current rules).
        self._force_snapshot = True
        self._commit()


__all__ = ["Item", "RuleEngine", "from_ms", "metadata_text", "to_ms"]
