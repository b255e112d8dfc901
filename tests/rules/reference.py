"""A brute-force reference for the rule engine, written from ``docs/rules.md`` alone.

No heaps, no indexes, no incremental counters: every decision is a scan over everything the
rule has seen since it was (re)enabled. Quadratic and slow, and meant to be obviously right.

Input is a list of steps; the output is every composite event in its last state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.events.schema import Event
from agent.rules.config import RuleConfig


def ms(seconds: float) -> int:
    """Seconds (clock readings, rule settings) as whole milliseconds."""
    return round(seconds * 1000)


def event_ms(event: Event) -> int:
    """Event time in whole milliseconds."""
    return round(event.timestamp.timestamp() * 1000)


@dataclass(frozen=True)
class Step:
    """``event`` (with ``event``), ``tick``, ``enable`` (``rule_id``, ``enabled``) or
    ``restart``; ``clock`` is the clock reading in seconds when the step runs."""

    kind: str
    clock: float
    event: Event | None = None
    rule_id: str = ""
    enabled: bool = True


@dataclass
class Composite:
    """A composite as the reference sees it."""

    rule_id: str
    group_key: str
    members: list[tuple[int, int, Event]]  # (time ms, arrival index, event)
    status: str = "open"
    ended: int | None = None

    @property
    def started(self) -> int:
        return min(m[0] for m in self.members)

    def summary(self) -> tuple[Any, ...]:
        ids = tuple(m[2].id for m in sorted(self.members, key=lambda m: (m[0], m[1])))
        return (self.rule_id, self.group_key, ids, self.started, self.status, self.ended)


@dataclass
class _RuleRun:
    config: RuleConfig
    enabled: bool
    admitted: list[tuple[int, int, Event, str]] = field(default_factory=list)
    seen_tracks: list[tuple[tuple[str, str], int]] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)  # candidates beyond the bound
    composites: list[Composite] = field(default_factory=list)  # since (re)enabled


def group_key(rule: RuleConfig, event: Event, device_id: str) -> str | None:
    """The group of ``event`` under ``rule``; None when it has no value for the strategy."""
    assert event.label is not None
    strategy = rule.group_by
    if strategy == "label_id":
        return device_id + ":" + event.label.id
    if strategy == "source_id":
        return device_id + ":" + event.source.id
    if strategy == "label_and_source":
        return device_id + ":" + event.label.id + ":" + event.source.id
    if strategy == "device":
        return device_id
    if strategy == "use_case":
        return device_id + ":" + event.use_case
    if strategy == "none":
        return device_id + ":all"
    key = strategy.split(".", 1)[1]
    if key not in event.metadata:
        return None
    value = event.metadata[key]
    if value is True:
        text = "true"
    elif value is False:
        text = "false"
    else:
        text = str(value)
    return device_id + ":" + text


def qualifies(rule: RuleConfig, event: Event) -> bool:
    """Whether the rule's filters let the event through."""
    if event.label is None:
        return False
    if rule.include_label_ids is not None and event.label.id not in rule.include_label_ids:
        return False
    kind = event.source.kind
    mics, cameras = rule.include_mic_ids, rule.include_camera_ids
    if kind == "microphone" and mics is not None and event.source.id not in mics:
        return False
    if kind == "camera" and cameras is not None and event.source.id not in cameras:
        return False
    return rule.include_use_cases is None or event.use_case in rule.include_use_cases


def run_reference(
    rules: list[RuleConfig],
    device_id: str,
    steps: list[Step],
    *,
    max_events: int = 1000,
    track_ttl: float = 300.0,
) -> list[Composite]:
    """Every composite the steps produce, in its last state."""
    runs = [_RuleRun(r, r.enabled) for r in rules]
    archive: list[Composite] = []
    now = 0

    def finalize_due() -> None:
        for run in runs:
            window = ms(run.config.window_seconds)
            for c in run.composites:
                newest = max(m[0] for m in c.members)
                if c.status == "open" and newest + window <= now:
                    c.status, c.ended = "final", newest + window

    def switch(run: _RuleRun, enabled: bool) -> None:
        if run.enabled == enabled:
            return
        if not enabled:
            for c in run.composites:
                if c.status == "open":
                    c.status, c.ended = "final", now
            archive.extend(run.composites)
            run.composites, run.admitted, run.seen_tracks = [], [], []
            run.dropped = set()
        run.enabled = enabled

    for arrival, step in enumerate(steps):
        now = max(now, ms(step.clock))
        if step.event is not None:
            now = max(now, event_ms(step.event))
        finalize_due()
        if step.kind == "enable":
            for run in runs:
                if run.config.id == step.rule_id:
                    switch(run, step.enabled)
        elif step.kind == "restart":
            for run in runs:
                switch(run, run.config.enabled)
        elif step.kind == "event":
            assert step.event is not None
            for run in runs:
                if run.enabled:
                    _offer(run, step.event, arrival, now, device_id, max_events, track_ttl)
    for run in runs:
        archive.extend(run.composites)
    return archive


def _offer(
    run: _RuleRun, event: Event, arrival: int, now: int, device_id: str, max_events: int,
    track_ttl: float,
) -> None:
    rule = run.config
    window = ms(rule.window_seconds)
    if not qualifies(rule, event):
        return
    key = group_key(rule, event, device_id)
    if key is None:
        return
    t = event_ms(event)
    if t + window <= now:
        return  # late
    if any(a[2].id == event.id for a in run.admitted):
        return  # a copy of an event already counted, whatever its content
    if event.track_id is not None:
        track = (event.source.id, event.track_id)
        before = [seen for k, seen in run.seen_tracks if k == track]
        run.seen_tracks.append((track, t))
        if before and max(before) + max(ms(track_ttl), window) > now:
            return  # a later phase of an object or sound already counted
    cooldown = ms(rule.cooldown_seconds)
    ends = [c.ended for c in run.composites if c.group_key == key and c.ended is not None]
    if cooldown > 0 and ends and t < max(ends) + cooldown:
        return
    run.admitted.append((t, arrival, event, key))
    open_ = [c for c in run.composites if c.group_key == key and c.status == "open"]
    if open_:
        composite = open_[0]
        composite.members.append((t, arrival, event))
    else:
        in_composites = {m[2].id for c in run.composites for m in c.members}
        candidates = sorted(
            (at, aa, ae) for at, aa, ae, ak in run.admitted
            if ak == key and ae.id not in in_composites and ae.id not in run.dropped
            and at + window > now
        )
        # An idle group holds at most max(cap, min_events) candidates: the oldest go.
        bound = max(max_events, rule.min_events)
        run.dropped.update(c[2].id for c in candidates[:-bound])
        candidates = candidates[-bound:]
        labels = {c[2].label.id for c in candidates if c[2].label is not None}
        if len(candidates) < rule.min_events or not set(rule.require_labels or []) <= labels:
            return
        composite = Composite(rule.id, key, candidates)
        run.composites.append(composite)
    if len(composite.members) >= max_events:
        composite.status, composite.ended = "final", now
