"""The event record: validation, serialisation, committed JSON Schemas, metadata checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from agent.events.config import MetadataField, UseCaseConfig
from agent.events.schema import DeviceRef, Event, Label, LabelName, SourceRef, json_schemas
from agent.events.validate import metadata_problems
from scripts.gen_schemas import SCHEMA_DIR, render
from tests.events.strict import problems


def make_event(**over: object) -> Event:
    fields: dict[str, object] = {
        "kind": "synthetic",
        "use_case": "default",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        "device": DeviceRef(id="edge-01"),
        "source": SourceRef(id="cam1", kind="camera", name="Cam 1"),
    }
    fields.update(over)
    return Event(**fields)  # type: ignore[arg-type]


def test_committed_json_schemas_are_current() -> None:
    for name, schema in json_schemas().items():
        committed = (SCHEMA_DIR / name).read_text(encoding="utf-8")
        assert committed == render(schema), f"{name} is stale: run scripts/gen_schemas.py"


def test_timestamp_is_utc_iso_with_milliseconds() -> None:
    local = datetime(2026, 1, 2, 12, 4, 5, 678901, tzinfo=timezone(timedelta(hours=9)))
    data = json.loads(make_event(timestamp=local).to_json())
    assert data["timestamp"] == "2026-01-02T03:04:05.678Z"


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        make_event(timestamp=datetime(2026, 1, 2))


def test_id_is_uuid4_and_survives_a_round_trip() -> None:
    event = make_event()
    again = Event.model_validate_json(event.to_json())
    assert again.id == event.id and again == event
    with pytest.raises(ValidationError):
        make_event(id="8c3a5d5e-0f6b-11ee-be56-0242ac120002")  # a UUID v1


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Event.model_validate({**json.loads(make_event().to_json()), "surprise": 1})


def test_metadata_is_checked_against_the_use_case() -> None:
    use_cases = {
        "defects": UseCaseConfig(metadata={
            "line_id": MetadataField(type="string"),
            "shift": MetadataField(type="integer"),
            "note": MetadataField(type="string", required=False),
        })
    }
    good = make_event(use_case="defects", metadata={"line_id": "L1", "shift": 2})
    assert metadata_problems(good, use_cases) == []
    bad = make_event(use_case="defects", metadata={"shift": True, "extra": 1})
    problems = metadata_problems(bad, use_cases)
    assert "metadata.line_id: missing (use case defects requires it)" in problems
    assert any(p.startswith("metadata.shift: expected integer, got bool") for p in problems)
    assert "metadata.extra: not declared by use case defects" in problems
    assert metadata_problems(make_event(use_case="nope"), use_cases) == [
        "use case 'nope' is not configured"
    ]


def _composite() -> dict[str, object]:
    from agent.events.schema import CompositeEvent, LabelState, RuleRef

    event = make_event(label=Label(id="glass", name=LabelName(en="Glass", ko="유리")))
    composite = CompositeEvent(
        group_key="edge-01:glass", device=DeviceRef(id="edge-01"), event_count=1,
        rule=RuleRef(id="r", name="r", window_seconds=5, min_events=1, enabled=True,
                     group_by="label_id"),
        events=[event], labels=[LabelState(id="glass", name=event.label.name)],  # type: ignore[union-attr]
        started_at=event.timestamp, updated_at=event.timestamp,
    )
    return json.loads(composite.to_json())  # type: ignore[no-any-return]


def test_strict_composite_schema_requires_the_contract() -> None:
    good = _composite()
    assert problems("composite-event.schema.json", good) == []
    for field in ("id", "mics", "labels", "event_count", "ended_at", "status"):
        broken = {k: v for k, v in good.items() if k != field}
        assert problems("composite-event.schema.json", broken), f"{field} not required"
    for path, value in ((("labels", 0, "name", "ko"), ""), (("started_at",), "yesterday"),
                        (("id",), "not-a-uuid"), (("group_key",), ""),
                        (("updated_at",), "2026-13-40T00:00:00Z")):
        broken = json.loads(json.dumps(good))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert problems("composite-event.schema.json", broken), f"{path} = {value!r} passed"


def test_strict_event_schema_requires_every_field() -> None:
    good = json.loads(make_event(label=Label(id="glass", name=LabelName(en="G", ko="유"))
                                 ).to_json())
    assert problems("event.schema.json", good) == []
    for field in ("id", "timestamp", "label", "run_id", "metadata"):
        broken = {k: v for k, v in good.items() if k != field}
        assert problems("event.schema.json", broken), f"{field} not required"
    broken = {**good, "timestamp": "yesterday"}
    assert problems("event.schema.json", broken)
    broken = {**good, "label": {"id": "glass", "name": {"en": "G", "ko": ""}}}
    assert problems("event.schema.json", broken)
    # The models refuse what the schema refuses.
    with pytest.raises(ValidationError):
        LabelName(en="G", ko="")
