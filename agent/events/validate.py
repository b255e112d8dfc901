"""Checking an event's custom metadata against the keys and types its use case declares."""

from __future__ import annotations

from agent.events.config import MetadataType, UseCaseConfig
from agent.events.schema import Event, MetadataValue


def _type_ok(value: MetadataValue, expected: MetadataType) -> bool:
    # bool is an int in Python; a use case asking for a number must not accept True.
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metadata_problems(event: Event, use_cases: dict[str, UseCaseConfig]) -> list[str]:
    """Every way the event's metadata departs from its use case; empty when it matches."""
    use_case = use_cases.get(event.use_case)
    if use_case is None:
        return [f"use case {event.use_case!r} is not configured"]
    problems = []
    for key, spec in use_case.metadata.items():
        if key not in event.metadata:
            if spec.required:
                problems.append(f"metadata.{key}: missing (use case {event.use_case} requires it)")
            continue
        value = event.metadata[key]
        if not _type_ok(value, spec.type):
            problems.append(
                f"metadata.{key}: expected {spec.type}, got {type(value).__name__} {value!r}"
            )
    if use_case.strict:
        for key in event.metadata:
            if key not in use_case.metadata:
                problems.append(f"metadata.{key}: not declared by use case {event.use_case}")
    if len(event.metadata) > 100:
        problems.append("metadata: more than 100 keys (the vision-events API limit)")
    return problems
