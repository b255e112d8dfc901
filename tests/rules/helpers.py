"""Builders shared by the rule tests: events, rules and an engine driver that can restart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from agent.clock import ManualClock
from agent.events.schema import (
    CompositeEvent,
    DeviceRef,
    Event,
    Label,
    LabelName,
    MetadataValue,
    SourceRef,
)
from agent.rules.config import RuleConfig
from agent.rules.engine import RuleEngine, from_ms

T0_MS = 1_700_000_000_000
DEVICE = DeviceRef(id="edge-01")
SOURCES = {
    "cam-1": SourceRef(id="cam-1", kind="camera", name="Front door"),
    "cam-2": SourceRef(id="cam-2", kind="camera", name="Yard"),
    "mic-1": SourceRef(id="mic-1", kind="microphone", name="Hall", location="hall"),
    "mic-2": SourceRef(id="mic-2", kind="microphone", name="Garage"),
    "syn-1": SourceRef(id="syn-1", kind="synthetic", name="Test source"),
}
LABELS = {
    "person": Label(id="person", name=LabelName(en="person", ko="사람")),
    "car": Label(id="car", name=LabelName(en="car", ko="자동차")),
    "glass": Label(id="glass", name=LabelName(en="Glass", ko="유리")),
    "dog": Label(id="dog", name=LabelName(en="Dog", ko="개")),
}
_KIND = {"camera": "object", "microphone": "sound", "synthetic": "synthetic"}


def event_id(n: int) -> str:
    """A deterministic UUID v4 for event number ``n``."""
    return str(uuid.UUID(int=n + 1, version=4))


def make_event(
    n: int,
    at_ms: int,
    *,
    label: str = "person",
    source: str = "cam-1",
    use_case: str = "default",
    metadata: dict[str, MetadataValue] | None = None,
    track_id: str | None = None,
    phase: str | None = None,
) -> Event:
    """Base event number ``n`` at ``at_ms`` (milliseconds after ``T0_MS``)."""
    src = SOURCES[source]
    data: dict[str, Any] = {
        "id": event_id(n),
        "kind": _KIND[src.kind],
        "use_case": use_case,
        "timestamp": from_ms(T0_MS + at_ms),
        "device": DEVICE,
        "source": src,
        "label": LABELS[label],
        "metadata": metadata or {},
        "track_id": track_id,
        "phase": phase,
    }
    return Event(**data)


def rule(rule_id: str = "r1", **fields: Any) -> RuleConfig:
    """A rule with the given fields (window 10 s and 2 events unless told)."""
    fields.setdefault("window_seconds", 10)
    fields.setdefault("min_events", 2)
    return RuleConfig(id=rule_id, **fields)


class Driver:
    """An engine on a manual clock; remembers the last state of every composite seen."""

    def __init__(self, rules: list[RuleConfig], state_dir: Path | None, **engine_args: Any):
        self.rules = rules
        self.state_dir = state_dir
        self.engine_args = engine_args
        self.clock = ManualClock(start=T0_MS / 1000)
        self.latest: dict[str, CompositeEvent] = {}
        self.members: dict[str, dict[str, Event]] = {}
        self.emitted: list[CompositeEvent] = []
        self.engine = self._open()

    def _open(self) -> RuleEngine:
        return RuleEngine(self.rules, DEVICE, self.clock, self.state_dir, **self.engine_args)

    def take(self, composites: list[CompositeEvent]) -> list[CompositeEvent]:
        """Record what the engine handed out; ``latest`` holds each composite with its whole
        member list, rebuilt from the open updates as a consumer would (and checked against
        each message's ``event_count`` and the final's list)."""
        for c in composites:
            before = self.latest.get(c.id)
            assert before is None or before.status == "open", "nothing follows a final"
            assert before is None or before.started_at >= c.started_at
            assert before is None or before.updated_at <= c.updated_at
            members = self.members.setdefault(c.id, {})
            for e in c.events:
                members.setdefault(e.id, e)
            assert len(members) == c.event_count, "the updates add up to the whole"
            if c.status == "final":
                assert [e.id for e in c.events] == [
                    e.id for e in sorted(members.values(), key=lambda e: e.timestamp)]
                self.latest[c.id] = c
            else:
                whole = sorted(members.values(), key=lambda e: e.timestamp)
                self.latest[c.id] = c.model_copy(update={"events": whole})
        self.emitted.extend(composites)
        return composites

    def at(self, ms_after_t0: int) -> None:
        """Move the clock to ``T0_MS + ms_after_t0`` (never backwards)."""
        target = (T0_MS + ms_after_t0) / 1000
        if target > self.clock.time():
            self.clock.advance(target - self.clock.time())

    def process(self, *events: Event) -> list[CompositeEvent]:
        return self.take(self.engine.process_many(events))

    def tick(self) -> list[CompositeEvent]:
        return self.take(self.engine.tick())

    def restart(self) -> None:
        self.engine.close()
        self.engine = self._open()

    def finals(self) -> list[CompositeEvent]:
        return [c for c in self.latest.values() if c.status == "final"]
