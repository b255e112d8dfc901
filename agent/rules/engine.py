"""The rule engine: base events in, composite events out (semantics in ``docs/rules.md``).

Each rule keeps its groups; a group is either idle (candidate events, pruned as they leave the
window) or open (the members of one composite event, growing until ``window_seconds`` pass
without a new one). Times are whole milliseconds; the engine's *now* is the larger of the
injected clock and the newest event time seen, and never goes backwards, so a replay with a
clock that stands still gives the same result as one that follows event time.

Hot path notes: an event is routed to the rules whose static filters (label, source, kind,
use case) it passes through a cache keyed by those four values, and every group key except
``metadata.<key>`` ones is precomputed in that cache, so a rule that does not match costs
nothing and a rule that does costs a few dictionary and list operations. Copies (same event
id) are found through one engine-wide table of the counted event ids (the last
``max_tracked_ids``, whatever their time) with a bit per rule that counted them, so the
common case (not a copy) costs one lookup per event, not per rule. An open composite's
sources and labels are gathered when it is handed out, not per event, and nothing is
serialised or built as a model until a composite is handed out; an open update carries only
the members that joined since the last one (``_Group.fresh``), a final all of them.

Persistence (``state.py``) stores the input: each event that changed some rule's state, once,
with the engine's now; a restart replays the events stored since the last snapshot through
this same code, silently (nothing it forms or closes is handed out again: what a call handed
out stays in the file until the caller's next call, and is handed out again after a crash).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import logging
import math
import threading
import uuid
from bisect import insort
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

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
from agent.rules.state import (
    RuleStore,
    StoredEvent,
    pack_ids,
    pack_seqs,
    unpack_ids,
    unpack_seqs,
)

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)

Item = tuple[int, int, Event]
"""An admitted event: (event time in ms, sequence number, the event without media bytes)."""

RouteKey = tuple[str, str, str, str]
Route = list[tuple["_Rule", "_Group | None", str, "str | None", int, int]]
"""Per rule an event of a route key counts for: the rule, its group (for fixed group keys),
the group key (the prefix for ``metadata.<key>``), the metadata key, window and bit."""


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


_PARTS = {"events", "mics", "cameras", "labels"}
"""What a stored final leaves out: rebuilt from its members' stored events."""

_COLLECT_EVERY_MS = 60_000
"""How often (engine time) calls that feed events also drop what time released."""


def _finite_times(rules: Sequence[RuleConfig]) -> list[str]:
    """Rules whose window or cooldown is not a finite number of seconds."""
    return [
        f"rule {r.id}: {name} must be a finite number of seconds (got {value})"
        for r in rules
        for name, value in (("window_seconds", r.window_seconds),
                            ("cooldown_seconds", r.cooldown_seconds))
        if not math.isfinite(value)
    ]


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


class _Group:
    """One group of one rule: idle (candidates) or open (members of one composite)."""

    __slots__ = (
        "cand",
        "cid",
        "cooldown_until",
        "fresh",
        "key",
        "labels",
        "members",
        "newest",
        "parts",
        "published",
        "rule",
        "scanned",
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
        self.labels: dict[str, int] = {}  # label counts among candidates (require_labels)
        self.cooldown_until = 0
        # The open composite's microphones, cameras and labels in order of joining; members
        # from ``scanned`` on are not in them yet (gathered when the composite is handed out).
        self.parts: tuple[dict[str, SourceRef], dict[str, SourceRef], dict[str, Label]] = (
            {}, {}, {})
        self.scanned = 0
        self.published: int | None = None  # engine now of the last open payload handed out
        # Members not handed out yet: an open update carries these, not the whole list.
        self.fresh: list[Item] = []

    def empty(self, now: int, window: int) -> bool:
        return self.cid is None and not self.cand and self.cooldown_until + window <= now

    def gather(self) -> None:
        """Bring ``parts`` up to date with the members (in the order they joined)."""
        members = self.members
        if self.scanned >= len(members):
            return
        mics, cameras, labels = self.parts
        for it in islice(members, self.scanned, None):
            event = it[2]
            source = event.source
            source_id = source.id
            if source_id not in mics and source_id not in cameras:
                kind = source.kind
                if kind == "microphone":
                    mics[source_id] = source
                elif kind == "camera":
                    cameras[source_id] = source
            label = event.label
            if label is not None and label.id not in labels:
                labels[label.id] = label
        self.scanned = len(members)

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

    def insert_late(self, item: Item) -> None:
        """Add a member older than the newest (a late event), keeping the order of joining."""
        self.gather()
        insort(self.members, item)
        self.fresh.append(item)
        self.scanned = len(self.members)
        self.join(item[2])
        if item[0] < self.started:  # a late event can start the composite earlier
            self.started = item[0]

    def dump(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "st": self.started,
            "nw": self.newest,
            "up": self.updated,
            "m": pack_seqs([it[1] for it in self.members]),
            "c": pack_seqs([it[1] for it in self.cand]),
            "cd": self.cooldown_until,
        }


class _Rule:
    """A rule's compiled settings, its groups, track memory and counters."""

    def __init__(self, config: RuleConfig, device_id: str, track_ttl_ms: int, bit: int) -> None:
        self.groups: dict[str, _Group] = {}
        self.tracks: dict[tuple[str, str], int] = {}
        self.active = True
        self.bit = bit  # this rule's bit in the engine's table of live event ids
        self.device_id = device_id
        self.track_ttl_ms = track_ttl_ms
        self.zero_counters()
        self.configure(config)

    def zero_counters(self) -> None:
        self.formed = self.updated = self.finalized = 0
        self.late = self.duplicates = self.repeats = self.suppressed = self.dropped = 0

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
    final are never held back). Memory is bounded by count, not by rate x window:
    ``max_tracked_ids`` counted event ids (engine-wide; copies of them are set aside),
    ``max_tracks`` tracks per rule, and per group at most ``max_events_per_composite``
    members (or ``max(cap, min_events)`` candidates).
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
        max_tracked_ids: int = 50_000,
        max_tracks: int = 10_000,
    ) -> None:
        problems = check_unique_ids(rules) + _finite_times(rules)
        if problems:
            raise ValueError("; ".join(problems))
        if max_events_per_composite < 1:
            raise ValueError("max_events_per_composite must be at least 1")
        if max_tracked_ids < 1 or max_tracks < 1:
            raise ValueError("max_tracked_ids and max_tracks must be at least 1")
        self._device = device
        self._clock = clock
        self._label_names = label_names
        self._cap = max_events_per_composite
        self._max_ids = max_tracked_ids
        # Trimmed back to the limit once this far over it: amortised O(1) per event.
        self._ids_slack = max(16, max_tracked_ids // 4)
        self._max_tracks = max_tracks
        self._tracks_slack = max(16, max_tracks // 4)
        self._track_ttl_ms = round(track_ttl_seconds * 1000)
        self._update_interval_ms = round(update_interval_seconds * 1000)
        # Open updates held back by ``update_interval_seconds``, and when each is due.
        self._owed: dict[_Group, None] = {}
        self._owed_due: list[tuple[int, int, _Group]] = []
        self._lock = threading.RLock()
        self._rules: dict[str, _Rule] = {}
        for config in rules:
            self._rules[config.id] = self._new_rule(config)
        self._routes: dict[RouteKey, Route] = {}
        self._label_states: dict[str, LabelState] = {}
        self._deadlines: list[tuple[int, int, _Rule, _Group, str]] = []
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
        self._opened: dict[_Group, None] = {}
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
        self._seed: str | None = None
        self._store = RuleStore(state_dir) if state_dir is not None else None
        self._closed = False
        if self._store is not None:
            self._seed = self._store.seed
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
            self._receipt()
            self._advance_clock()
            self._finalize_due(self._now)
            one = self._one
            for event in events:
                one(event)
            if self._now >= self._next_collect:
                self._collect()
            return self._finish()

    def drain(self) -> list[CompositeEvent]:
        """Let time run until every open composite is final, each at its own moment
        (``ended_at`` and ``updated_at`` = newest member + window), as if no event came
        again. For the end of a dry run; the engine's now ends at the last of them."""
        with self._lock:
            self._check_open()
            self._receipt()
            self._advance_clock()
            deadlines = self._deadlines
            while deadlines:
                if deadlines[0][0] > self._now:
                    self._now = deadlines[0][0]
                self._finalize_due(self._now)
            self._collect()
            return self._finish()

    def tick(self) -> list[CompositeEvent]:
        """Finalise composites whose window has passed by the clock; the daemon calls ~1/s."""
        with self._lock:
            self._check_open()
            self._receipt()
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
            self._rules_changed()
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
            self._apply(rules, restart=False)
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
                    "dropped": rule.dropped,
                }
            return out

    def close(self) -> None:
        """Release the state file; the engine cannot be used afterwards. Idempotent.

        Closing is the caller's receipt for what the last call handed out (see
        ``_receipt``): call it after storing that, not instead."""
        with self._lock:
            if self._closed:
                return
            if self._store is not None and self._handed:
                self._receipt()
                self._commit()
            self._closed = True
            if self._store is not None:
                self._store.close()

    # ------------------------------------------------------------------------ hot path

    def _one(self, event: Event) -> None:
        t = (event.timestamp - _EPOCH) // _ONE_MS
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
        opened, cap = self._opened, self._cap
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
                    group = rule.groups[group_key] = _Group(group_key, rule)
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
            if len(cand) > cap and len(cand) > rule.min_events:
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
                        group = rule.groups[group_key] = _Group(group_key, rule)
                route.append((rule, group, group_key, rule.meta_key, rule.window, rule.bit))
        self._routes[key] = route
        return route

    # --------------------------------------------------------------- group transitions

    def _prune(self, rule: _Rule, group: _Group, now: int) -> None:
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

    def _overflow(self, rule: _Rule, group: _Group) -> None:
        """Drop the oldest candidates beyond ``max(max_events_per_composite, min_events)``:
        only a group waiting for a ``require_labels`` label gets there, and without this
        bound it would hold every event of its window."""
        cand = group.cand
        limit = max(self._cap, rule.min_events)
        while len(cand) > limit:
            _t, _seq, event = heapq.heappop(cand)
            rule.dropped += 1
            if rule.required is not None and event.label is not None:
                left = group.labels[event.label.id] - 1
                if left:
                    group.labels[event.label.id] = left
                else:
                    del group.labels[event.label.id]

    def _form(self, rule: _Rule, group: _Group, now: int, seq: int) -> None:
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
        if len(group.members) >= self._cap:
            self._finalize(rule, group, now, early=True)
        else:
            self._opened[group] = None

    def _composite_id(self, rule: _Rule, key: str, seq: int) -> str:
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

    def _finalize(self, rule: _Rule, group: _Group, ended: int, *, early: bool) -> None:
        """Close the open composite of ``group``; ``ended`` is its ``ended_at``. A member of
        a composite closed early stays in the table of live ids, so a copy is still caught."""
        assert group.cid is not None
        group.updated = max(group.updated, self._now)
        if not self._silent:
            self._keep_members(group)
            self._finals.append(self._build(rule.ref, group, ended))
        self._opened.pop(group, None)
        group.members = []
        group.fresh = []
        group.parts = ({}, {}, {})
        group.scanned = 0
        group.cid = None
        if rule.cooldown > 0:
            group.cooldown_until = ended + rule.cooldown
        rule.finalized += 1

    def _keep_members(self, group: _Group) -> None:
        """Note a closing composite's members: the state file keeps them (and a compact
        record of the final) until the caller's receipt, to hand the final out again after a
        crash. Open updates are not kept: after a restart the next update of each open
        composite carries every member anyway."""
        if self._store is not None and group.cid is not None:
            self._final_seqs[group.cid] = [it[1] for it in group.members]

    def _reset(self, rule: _Rule, *, restart: bool = False) -> None:
        """Finalise a rule's open composites now and forget its windows (off, changed). On a
        restart a composite whose window passed meanwhile ends when it passed."""
        now = self._now
        for group in rule.groups.values():
            if group.cid is not None:
                group.updated = max(group.updated, now)
                ended = min(now, group.newest + rule.window) if restart else now
                self._keep_members(group)
                self._pending.append(self._build(rule.ref, group, ended))
                self._pending_changed = True
                self._opened.pop(group, None)
                rule.finalized += 1
        rule.groups = {}
        rule.tracks = {}
        keep = ~rule.bit
        self._seen = {k: m & keep for k, m in self._seen.items() if m & keep}

    def _build(self, ref: RuleRef, group: _Group, ended: int | None) -> CompositeEvent:
        """The payload: a final carries every member; an open update the members that joined
        since the last one handed out (``fresh``), with the whole composite's count, sources
        and labels."""
        assert group.cid is not None
        group.gather()
        mics, cameras, labels = group.parts
        if ended is None:
            fresh = group.fresh
            fresh.sort()  # late events join out of order
            events = [it[2] for it in fresh]
            group.fresh = []
        else:
            events = [it[2] for it in group.members]
        # Built without re-validating: every part is already a validated model.
        return CompositeEvent.model_construct(
            schema_version=1,
            id=group.cid,
            group_key=group.key,
            rule=ref,
            device=self._device,
            event_count=len(group.members),
            events=events,
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

    def _new_rule(self, config: RuleConfig, others: Sequence[_Rule] = ()) -> _Rule:
        """A rule with a bit that neither the current rules nor ``others`` use."""
        used = 0
        for rule in (*self._rules.values(), *others):
            used |= rule.bit
        bit = 1
        while used & bit:
            bit <<= 1
        return _Rule(config, self._device.id, self._track_ttl_ms, bit)

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
        if self._finals:
            self._pending.extend(self._finals)
            self._pending_changed = True
            self._finals = []

    def _finish(self) -> list[CompositeEvent]:
        if self._pending:
            self._pending_changed = True  # handed out now: the store must forget them
        out = self._pending
        out.extend(self._finals)
        now = self._now
        interval = self._update_interval_ms
        owed, due = self._owed, self._owed_due
        # Updates held back by the interval whose time has come; stale entries skipped.
        while due and due[0][0] <= now:
            _at, _n, group = heapq.heappop(due)
            if group in owed:
                del owed[group]
                self._opened[group] = None
        for group in self._opened:
            rule = group.rule
            if (group.cid is None or not group.fresh or not rule.active
                    or rule.groups.get(group.key) is not group):
                owed.pop(group, None)
                continue
            if group.published is not None and now - group.published < interval:
                if group not in owed:  # handed out by a later call
                    owed[group] = None
                    heapq.heappush(due, (group.published + interval, next(self._counter),
                                         group))
                continue
            owed.pop(group, None)
            group.published = now
            out.append(self._build(rule.ref, group, None))
        self._pending = []
        self._finals = []
        self._opened = {}
        if out:
            self._handed = out
            self._pending_changed = True
        self._commit()
        return out

    def _receipt(self) -> None:
        """A new call that hands composites out (``process``, ``process_many``, ``tick``,
        ``drain``) or ``close``: the caller has stored what the last one handed out. Control
        calls (``set_enabled``, ``reload``) come from other threads and are no receipt."""
        if self._handed:
            self._handed = []
            self._pending_changed = True

    def _commit(self) -> None:
        store = self._store
        log = self._log
        self._log = []
        if store is None:
            return
        self._events_since_snapshot += len(log)
        pending = None
        if self._pending_changed:
            finals = [c for c in (*self._handed, *self._pending) if c.status == "final"]
            seqs = self._final_seqs
            self._final_seqs = {c.id: seqs[c.id] for c in finals if c.id in seqs}
            if finals or self._stored_finals:
                pending = json.dumps([
                    {"h": c.model_dump(mode="json", exclude=_PARTS),
                     "s": pack_seqs(self._final_seqs.get(c.id, ()))}
                    for c in finals
                ], separators=(",", ":"))
                self._stored_finals = bool(finals)
            self._pending_changed = False
        snapshot: dict[str, Any] | None = None
        keep: set[int] = set()
        if self._force_snapshot or self._events_since_snapshot > self._snapshot_after:
            snapshot, keep = self._snapshot()
        store.commit(log, self._now, pending=pending, snapshot=snapshot, keep=keep)

    def _snapshot(self) -> tuple[dict[str, Any], set[int]]:
        """What replay cannot recover from the events after this point, and the sequence
        numbers of the stored events it refers to."""
        self._collect()
        keep: set[int] = set()
        for members in self._final_seqs.values():  # finals not received yet
            keep.update(members)
        groups: list[list[Any]] = []
        tracks: list[list[Any]] = []
        for rule in self._rules.values():
            for group in rule.groups.values():
                if group.empty(self._now, rule.window):
                    continue
                keep.update(it[1] for it in group.members)
                keep.update(it[1] for it in group.cand)
                groups.append([rule.id, group.key, group.dump()])
            tracks.extend([rule.id, s, k, u] for (s, k), u in rule.tracks.items())
        state = {
            "now": self._now,
            "seq": self._next_seq,
            "g": groups,
            "t": tracks,
            "ids": {"u": pack_ids(self._seen), "m": list(self._seen.values())},
            "rules": {
                r.id: {"fp": r.fingerprint, "bit": r.bit, "ref": r.ref.model_dump(mode="json")}
                for r in self._rules.values()
            },
        }
        self._force_snapshot = False
        self._events_since_snapshot = 0
        self._snapshot_after = max(self._snapshot_min, 2 * len(keep))
        return state, keep

    def _restore(self, store: RuleStore) -> None:
        """Load the snapshot, replay the events stored after it, then apply the rules given
        now (as ``reload`` would, except that a rule must be enabled in them to keep its
        windows: the configuration decides at start)."""
        loaded = store.load()
        decoded = {row[0]: store.decode(row) for row in loaded.rows}
        self._pending = [c for c in (self._stored_final(d, decoded) for d in loaded.pending)
                         if c is not None]
        self._stored_finals = bool(self._pending)
        snap = loaded.snapshot
        configs = [r.config for r in self._rules.values()]
        if snap is not None:
            self._rules = {}
            for rule_id, meta in snap["rules"].items():
                try:
                    config = RuleConfig.model_validate(meta["ref"])
                except ValidationError as exc:
                    logger.warning("rules state: rule %s cannot be read back (%s); its windows "
                                   "are dropped", rule_id, exc)
                    continue
                rule = _Rule(config, self._device.id, self._track_ttl_ms, meta["bit"])
                rule.fingerprint = meta["fp"]
                self._rules[rule_id] = rule
            self._rules_changed()
            self._now = snap["now"]
            self._next_seq = snap["seq"]
            events: dict[int, Event] = {}
            replay: list[tuple[int, int, Event]] = []
            for row in loaded.rows:
                event = decoded[row[0]]
                if row[0] >= snap["seq"]:
                    replay.append((row[0], row[1], event))
                else:
                    events[row[0]] = event
            self._restore_snapshot(snap, events)
            self._silent = True
            try:
                for seq, now, event in replay:
                    if now > self._now:
                        self._now = now
                    self._next_seq = seq
                    self._one(event)
                    self._next_seq = max(self._next_seq, seq + 1)
                # Everything due by the last commit's now was handed out before the restart.
                self._now = max(self._now, loaded.now)
                self._finalize_due(self._now)
            finally:
                self._silent = False
            # What was handed out before the restart is not known member by member: the
            # next update of each open composite carries all its members again.
            for rule in self._rules.values():
                for group in rule.groups.values():
                    group.fresh = list(group.members)
            self._opened = {}
            self._finals = []
            for rule in self._rules.values():
                rule.zero_counters()
            if loaded.rows or snap["g"]:
                logger.info(
                    "rules state: restored %d groups from %s (%d events replayed)",
                    sum(len(r.groups) for r in self._rules.values()), store.path, len(replay),
                )
        # What the clock has made due is closed now and owed (stored with the now that
        # made it due): the next start must not take it as handed out.
        self._catch_up()
        groups_before = sum(len(r.groups) for r in self._rules.values())
        self._apply(configs, restart=True)
        dropped = groups_before - sum(len(r.groups) for r in self._rules.values())
        if dropped > 0:
            logger.warning(
                "rules state: %d groups of rules that changed, were removed or are disabled "
                "since the last run were discarded (open composites are closed)", dropped
            )
        # Start afresh from what is live now (also records the current rules).
        self._force_snapshot = True
        self._commit()

    def _stored_final(self, record: dict[str, Any], events: dict[int, Event]
                      ) -> CompositeEvent | None:
        """A final handed out before a crash and not received, from its compact record."""
        if "h" not in record:  # written before 0.3: the whole composite, no event_count
            return CompositeEvent.model_validate(
                {"event_count": len(record.get("events") or ()), **record})
        seqs = unpack_seqs(record["s"])
        members = [events[s] for s in seqs if s in events]
        if len(members) < len(seqs) or not members:
            logger.warning("rules state: final composite %s lost %d of its %d stored "
                           "members; handed out with the rest", record["h"].get("id"),
                           len(seqs) - len(members), len(seqs))
            if not members:
                return None
        mics: dict[str, SourceRef] = {}
        cameras: dict[str, SourceRef] = {}
        labels: dict[str, Label] = {}
        for event in members:
            source = event.source
            if source.kind == "microphone":
                mics.setdefault(source.id, source)
            elif source.kind == "camera":
                cameras.setdefault(source.id, source)
            if event.label is not None:
                labels.setdefault(event.label.id, event.label)
        composite = CompositeEvent.model_validate({
            **record["h"], "events": members, "mics": list(mics.values()),
            "cameras": list(cameras.values()),
            "labels": [self._label_state(label) for label in labels.values()],
        })
        self._final_seqs[composite.id] = seqs
        return composite

    def _restore_snapshot(self, snap: dict[str, Any], events: dict[int, Event]) -> None:
        missing = 0

        def items_of(packed: str) -> list[Item]:
            nonlocal missing
            out: list[Item] = []
            for seq in unpack_seqs(packed):
                event = events.get(seq)
                if event is None:
                    missing += 1
                else:
                    out.append((to_ms(event.timestamp), seq, event))
            out.sort()
            return out

        for rule_id, key, state in snap["g"]:
            rule = self._rules.get(rule_id)
            if rule is None:
                continue
            group = rule.groups[key] = _Group(key, rule)
            group.cooldown_until = state["cd"]
            group.updated = state["up"]
            if state["cid"] is not None:
                group.members = items_of(state["m"])
                if group.members:
                    group.cid = state["cid"]
                    # Derived from the members, which late events may have moved.
                    group.started = group.members[0][0]
                    group.newest = group.members[-1][0]
                    heapq.heappush(self._deadlines, (
                        group.newest + rule.window, next(self._counter), rule, group, group.cid))
                continue
            group.cand = items_of(state["c"])  # sorted is a heap
            if rule.required is not None:
                for it in group.cand:
                    label = it[2].label
                    if label is not None:
                        group.labels[label.id] = group.labels.get(label.id, 0) + 1
        for rule_id, source_id, track_id, until in snap["t"]:
            rule = self._rules.get(rule_id)
            if rule is not None:
                rule.tracks[(source_id, track_id)] = until
        ids = snap["ids"]
        if isinstance(ids, dict):
            self._seen = dict(zip(unpack_ids(ids["u"]), ids["m"], strict=True))
        else:  # written before 0.3: [seqs of stored events, times, masks]
            seqs, _times, masks = ids
            for seq, mask in zip(unpack_seqs(seqs), masks, strict=True):
                event = events.get(seq)
                if event is None:
                    missing += 1
                else:
                    self._seen[event.id] = mask
        if missing:
            logger.warning("rules state: %d stored events are missing; they are left out",
                           missing)


__all__ = ["Item", "RuleEngine", "from_ms", "metadata_text", "to_ms"]
