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
the members that joined since the last one (``Group.fresh``), a final all of them.

Persistence (``persistence.py``, over ``state.py``) stores the input: each event that changed
some rule's state, once, with the engine's now; a restart replays the events stored since the
last snapshot through this same code, silently (nothing it forms or closes is handed out
again: what a call handed out stays in the file until the caller's next call, and is handed
out again after a crash).

The engine is built in layers, one module each: ``groups`` (a rule's settings and groups),
``payload`` (composite events built from groups), ``lifecycle`` (``EngineCore``: the state,
the hot path and the group transitions), ``persistence`` (``PersistentEngine``: commits and
restart) and this module (``RuleEngine``: the lock, the public calls, what a call hands out).
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.clock import Clock
from agent.events.schema import CompositeEvent, DeviceRef, Event, LabelName
from agent.rules.config import RuleConfig, check_unique_ids
from agent.rules.groups import Item, from_ms, metadata_text, to_ms
from agent.rules.persistence import PersistentEngine


def _finite_times(rules: Sequence[RuleConfig]) -> list[str]:
    """Rules whose window or cooldown is not a finite number of seconds."""
    return [
        f"rule {r.id}: {name} must be a finite number of seconds (got {value})"
        for r in rules
        for name, value in (("window_seconds", r.window_seconds),
                            ("cooldown_seconds", r.cooldown_seconds))
        if not math.isfinite(value)
    ]


class RuleEngine(PersistentEngine):
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
        super().__init__(
            rules,
            device,
            clock,
            label_names,
            max_events_per_composite=max_events_per_composite,
            track_ttl_seconds=track_ttl_seconds,
            update_interval_seconds=update_interval_seconds,
            max_tracked_ids=max_tracked_ids,
            max_tracks=max_tracks,
        )
        self._lock = threading.RLock()
        self._closed = False
        if state_dir is not None:
            self._open(state_dir)

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

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the rule engine is closed")

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
            out.append(self._payloads.build(rule.ref, group, None))
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


__all__ = ["Item", "RuleEngine", "from_ms", "metadata_text", "to_ms"]
