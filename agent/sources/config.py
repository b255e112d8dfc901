"""Configuration of sources (``cameras:``, ``microphones:``, ``synthetic:``).

Fields every source shares live in ``SourceCommon``; each kind adds its own.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.events.schema import MetadataValue

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SourceCommon(BaseModel):
    """Identity and event context of a source."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="unique among all sources; used in topics")
    name: str | None = Field(default=None, description="display name; defaults to id")
    location: str | None = None
    enabled: bool = True
    use_case: str = Field(default="default", description="a key of use_cases:")
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="custom metadata added to every event"
    )

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.', '-' (it is a topic level)"
            )
        return value

    @property
    def display_name(self) -> str:
        return self.name or self.id


class SyntheticConfig(SourceCommon):
    """A source that emits events at a fixed rate, with ``seq`` in the metadata.

    It lets the backbone (outbox, MQTT, rules) be run, tested and benchmarked end to end
    without cameras.
    """

    rate: float = Field(default=1.0, gt=0, le=100_000, description="events per second")
    labels: list[str] = Field(
        default_factory=lambda: ["person"], description="label ids cycled through"
    )
    kind: str = Field(default="synthetic", pattern="^(synthetic|camera|microphone)$",
                      description="source kind the events claim (to exercise rules)")
    payload_bytes: int = Field(default=0, ge=0, description="padding added to metadata")
    count: int | None = Field(default=None, ge=1, description="stop after this many events")
