"""Composite payloads: the CompositeEvent a group hands out, or one rebuilt from its members."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.events.schema import (
    CompositeEvent,
    DeviceRef,
    Event,
    Label,
    LabelName,
    LabelState,
    RuleRef,
    SourceRef,
)
from agent.rules.groups import Group, from_ms


class Payloads:
    """Builds the engine's composite events for one device; caches each label's state."""

    def __init__(
        self, device: DeviceRef, label_names: Callable[[str], LabelName | None] | None
    ) -> None:
        self._device = device
        self._label_names = label_names
        self._label_states: dict[str, LabelState] = {}

    def build(self, ref: RuleRef, group: Group, ended: int | None) -> CompositeEvent:
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
            labels=[self.label_state(label) for label in labels.values()],
            started_at=from_ms(group.started),
            updated_at=from_ms(group.updated),
            ended_at=None if ended is None else from_ms(ended),
            status="open" if ended is None else "final",
        )

    def label_state(self, label: Label) -> LabelState:
        """The label as composites carry it, named by ``label_names`` where it knows it."""
        state = self._label_states.get(label.id)
        if state is None:
            name = self._label_names(label.id) if self._label_names is not None else None
            state = LabelState(id=label.id, name=name or label.name, active=True)
            self._label_states[label.id] = state
        return state

    def from_members(self, header: dict[str, Any], members: Sequence[Event]) -> CompositeEvent:
        """A stored final from its compact record (``header``: all but the parts its members
        give) and its members: sources and labels gathered again, in the order they joined."""
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
        return CompositeEvent.model_validate({
            **header, "events": members, "mics": list(mics.values()),
            "cameras": list(cameras.values()),
            "labels": [self.label_state(label) for label in labels.values()],
        })


__all__ = ["Payloads"]
