"""Configuration of sources (``cameras:``, ``microphones:``, ``synthetic:``).

Fields every source shares live in ``SourceCommon``; each kind adds its own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agent.events.schema import MetadataValue
from agent.ids import TopicId


class SourceCommon(BaseModel):
    """Identity and event context of a source."""

    model_config = ConfigDict(extra="forbid")

    id: TopicId = Field(description="unique among all sources; used in topics")
    name: str | None = Field(default=None, description="display name; defaults to id")
    location: str | None = None
    enabled: bool = True
    use_case: str = Field(default="default", description="a key of use_cases:")
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="custom metadata added to every event"
    )

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
    burst: int | None = Field(
        default=None, ge=1,
        description="events per burst, at `rate`, then `burst_pause` seconds of quiet",
    )
    burst_pause: float = Field(default=0.0, ge=0, le=86_400,
                               description="seconds of quiet after each burst")
