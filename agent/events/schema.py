"""The event record: what every source produces and every consumer reads.

Follows ``shared/reference/vision-events.md`` (base events) and ``composite-events.md``
(composite events). JSON field names are snake_case; ``to_vision_events_api`` in
``agent.events.compat`` maps them onto the hosted service's camelCase names.

Events are immutable once built: a redelivery carries the very same ``id`` (the idempotency
key), so consumers can de-duplicate.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from agent.inference.session import ModelRef

SCHEMA_VERSION = 1


def _as_utc_ms(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a time zone (UTC)")
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


def _iso_ms(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


UtcTime = Annotated[
    datetime,
    AfterValidator(_as_utc_ms),
    PlainSerializer(_iso_ms, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A UTC timestamp with millisecond precision, serialised as ``2026-01-02T03:04:05.678Z``."""


def _check_uuid4(value: str) -> str:
    parsed = uuid.UUID(value)
    if parsed.version != 4:
        raise ValueError("id must be a UUID version 4")
    return str(parsed)


_UUID4_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

EventId = Annotated[
    str,
    AfterValidator(_check_uuid4),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": _UUID4_PATTERN}),
]
"""A UUID v4 in its canonical lower-case form."""

Name = Annotated[str, Field(min_length=1)]
"""An id or display name: never empty."""

MetadataValue = str | int | float | bool
SourceKind = Literal["camera", "microphone", "synthetic"]
EventKind = Literal["object", "sound", "synthetic", "snapshot", "classification"]
Phase = Literal["new", "update", "end"]


def new_event_id() -> str:
    """A fresh UUID v4 string."""
    return str(uuid.uuid4())


class _Frozen(BaseModel):
    # Every field is always emitted (nulls too), so the published JSON Schemas require
    # every field, defaults or not.
    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_serialization_defaults_required=True)


class LabelName(_Frozen):
    """A label's display name in the languages the product supports."""

    en: Name
    ko: Name


class Label(_Frozen):
    """A class a model can report: stable id (snake_case slug) and multilingual name."""

    id: Name
    name: LabelName


class DeviceRef(_Frozen):
    """The device that produced the event."""

    id: Name
    site: str | None = None
    location: str | None = None


class SourceRef(_Frozen):
    """The stream (camera, microphone, synthetic) that produced the event.

    For microphones this is the reference's microphone object: id, name, location, status.
    """

    id: Name
    kind: SourceKind
    name: Name
    location: str | None = None
    status: Literal["active", "inactive"] = "active"


class Box(_Frozen):
    """An axis-aligned box in pixels of the original frame: top-left corner and size."""

    x: float
    y: float
    width: float
    height: float


class Prediction(_Frozen):
    """One thing the model returned: a detection (with ``box``), a classification (the
    ``box`` is then the region classified, if not the whole frame), an instance
    segmentation (``box`` plus ``polygon`` and ``mask_area``) or keypoints (``box`` plus
    ``keypoints``). Coordinates are pixels of the original frame."""

    label: Label
    confidence: float = Field(ge=0.0, le=1.0)
    box: Box | None = None
    track_id: str | None = None
    polygon: list[tuple[float, float]] | None = Field(
        default=None, description="segmentation: the outline, [[x, y], ...], bounded in points"
    )
    mask_area: float | None = Field(default=None, ge=0.0,
                                    description="segmentation: the mask's area in pixels")
    keypoints: dict[str, tuple[float, float, float]] | None = Field(
        default=None, description="pose: [x, y, confidence] per keypoint name"
    )


class ObjectInfo(_Frozen):
    """A tracked object, as carried by ``kind: object`` events (one per object, not frame)."""

    score: float = Field(ge=0.0, le=1.0, description="score in the frame that caused this event")
    top_score: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0, description="score needed to confirm the object")
    box: Box
    area: float
    current_zones: list[str] = Field(default_factory=list)
    entered_zones: list[str] = Field(default_factory=list)
    stationary: bool = False
    frames: int = Field(default=0, ge=0, description="frames in which it was seen")


class SoundInfo(_Frozen):
    """A sound occurrence, as carried by ``kind: sound`` events."""

    confidence: float = Field(ge=0.0, le=1.0)
    confidence_threshold: float = Field(ge=0.0, le=1.0)
    sound_level: float = Field(description="dBFS of the loudest window of the occurrence so far")
    sound_level_threshold: float = Field(description="dBFS the classifier needed to run")


class Media(_Frozen):
    """An image or audio clip: inline (base64 ``data``) or on its own ``topic``."""

    role: str = Field(description="input, annotated, crop, clip")
    content_type: str
    bytes: int = Field(ge=0)
    sha256: str
    data: str | None = Field(default=None, description="base64 payload when inline")
    topic: str | None = Field(default=None, description="topic of the binary payload")
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    sample_rate: int | None = None


class Event(_Frozen):
    """A base event: one occurrence worth recording, from one source.

    ``phase``/``track_id``/``started_at``/``ended_at`` give objects and sounds a lifecycle:
    one ``new``, a few ``update``, one ``end`` per object or sound, all sharing ``track_id``.
    """

    schema_version: Literal[1] = 1
    id: EventId = Field(default_factory=new_event_id)
    kind: EventKind
    use_case: str
    timestamp: UtcTime
    device: DeviceRef
    source: SourceRef
    model: ModelRef | None = None
    run_id: str | None = Field(
        default=None, description="the agent process that accepted the event (new each start)"
    )
    seq: int | None = Field(
        default=None, ge=0,
        description="per-source counter within run_id, from 0: a gap means a lost event",
    )
    phase: Phase | None = None
    track_id: str | None = None
    started_at: UtcTime | None = None
    ended_at: UtcTime | None = None
    label: Label | None = Field(default=None, description="the main label of the event")
    predictions: list[Prediction] = Field(default_factory=list)
    object: ObjectInfo | None = None
    sound: SoundInfo | None = None
    images: list[Media] = Field(default_factory=list)
    audio: Media | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    def without_media(self) -> Event:
        """A copy with image and clip bytes removed (references and digests kept)."""
        images = [m.model_copy(update={"data": None}) for m in self.images]
        audio = self.audio.model_copy(update={"data": None}) if self.audio else None
        return self.model_copy(update={"images": images, "audio": audio})

    def to_json(self) -> bytes:
        """The JSON payload published on MQTT (compact, no nulls dropped)."""
        return self.model_dump_json().encode()


class LabelState(_Frozen):
    """A label linked to a composite event, as in the reference."""

    id: Name
    name: LabelName
    active: bool = True


class RuleRef(_Frozen):
    """The rule definition that produced a composite event (reference attributes first)."""

    id: Name
    name: Name
    description: str | None = None
    window_seconds: float
    min_events: int
    enabled: bool
    group_by: str
    include_label_ids: list[str] | None = None
    include_mic_ids: list[str] | None = None
    include_camera_ids: list[str] | None = None
    include_use_cases: list[str] | None = None
    require_labels: list[str] | None = None
    cooldown_seconds: float = 0.0


class CompositeEvent(_Frozen):
    """Several base events grouped by a rule into one result (``composite-events.md``).

    Published again with the same ``id`` while the group grows (``status: open``); final once
    ``window_seconds`` pass without a new qualifying event (``status: final``, ``ended_at``).
    An open message's ``events`` are the members that joined since the previous message of
    this ``id`` (all of them in the first); a final's are every member. ``event_count``,
    ``mics``, ``cameras``, ``labels`` and ``started_at`` always describe the whole composite.
    """

    schema_version: Literal[1] = 1
    id: EventId = Field(default_factory=new_event_id)
    group_key: Name
    rule: RuleRef
    device: DeviceRef
    event_count: int = Field(ge=1, description="members of the whole composite so far")
    events: list[Event] = Field(
        min_length=1,
        description="open: the members new since the previous message of this id; "
                    "final: every member",
    )
    mics: list[SourceRef] = Field(default_factory=list)
    cameras: list[SourceRef] = Field(default_factory=list)
    labels: list[LabelState] = Field(default_factory=list)
    started_at: UtcTime
    updated_at: UtcTime
    ended_at: UtcTime | None = None
    status: Literal["open", "final"] = "open"

    def to_json(self) -> bytes:
        """The JSON payload published on MQTT."""
        return self.model_dump_json().encode()


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas committed under ``agent/schemas/``, by file name."""
    return {
        "event.schema.json": Event.model_json_schema(mode="serialization"),
        "composite-event.schema.json": CompositeEvent.model_json_schema(mode="serialization"),
    }
