"""Persistence glue: what the engine commits to its state file, and its restart from it."""

from __future__ import annotations

import heapq
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.events.schema import CompositeEvent, Event
from agent.rules.config import RuleConfig
from agent.rules.groups import Group, Item, Rule, to_ms
from agent.rules.lifecycle import EngineCore
from agent.rules.state import RuleStore, pack_ids, pack_seqs, unpack_ids, unpack_seqs

logger = logging.getLogger(__name__)

_PARTS = {"events", "mics", "cameras", "labels"}
"""What a stored final leaves out: rebuilt from its members' stored events."""


def dump_group(group: Group) -> dict[str, Any]:
    """A group as a snapshot holds it: its times, and its members and candidates by sequence
    number (the events themselves are stored once, apart)."""
    return {
        "cid": group.cid,
        "st": group.started,
        "nw": group.newest,
        "up": group.updated,
        "m": pack_seqs([it[1] for it in group.members]),
        "c": pack_seqs([it[1] for it in group.cand]),
        "cd": group.cooldown_until,
    }


class PersistentEngine(EngineCore):
    """The engine's state with its state file (``state.py``): each commit stores the events
    that changed some rule's state, the finals not received yet and, now and then, a
    snapshot; a restart loads the snapshot and replays the events stored after it."""

    def _open(self, state_dir: Path) -> None:
        """Open (or create) the state file in ``state_dir`` and restore what it holds."""
        self._store = RuleStore(state_dir)
        self._seed = self._store.seed
        self._restore(self._store)

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
                groups.append([rule.id, group.key, dump_group(group)])
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
                rule = Rule(config, self._device.id, self._track_ttl_ms, meta["bit"], self._cap)
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
        composite = self._payloads.from_members(record["h"], members)
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
            group = rule.groups[key] = Group(key, rule)
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


__all__ = ["PersistentEngine", "dump_group"]
