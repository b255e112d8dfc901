"""The event record: validation, serialisation, committed JSON Schemas, metadata checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from agent.events.config import MetadataField, UseCaseConfig
from agent.events.schema import DeviceRef, Event, SourceRef, json_schemas
from agent.events.validate import metadata_problems
from scripts.gen_schemas import SCHEMA_DIR, render


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
