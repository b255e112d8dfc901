"""Configuration of use cases (``use_cases:``): the metadata their events carry."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MetadataType = Literal["string", "integer", "number", "boolean"]


class MetadataField(BaseModel):
    """One custom metadata key a use case's events carry."""

    model_config = ConfigDict(extra="forbid")

    type: MetadataType = "string"
    required: bool = True
    description: str | None = None


class UseCaseConfig(BaseModel):
    """A group of events that share a purpose and a metadata structure."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    event_type: str = Field(
        default="custom",
        description="eventType for the hosted vision-events API (quality_check, safety_alert...)",
    )
    metadata: dict[str, MetadataField] = Field(default_factory=dict)
    strict: bool = Field(default=True, description="reject metadata keys not declared here")
