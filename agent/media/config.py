"""Configuration of the media store (``media:``); imports nothing heavy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class MediaConfig(BaseModel):
    """Where and how much media (snapshots, crops, clips) the agent keeps on the device."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(
        default=None,
        description="keep every image and clip of every event in the store; default: on when "
        "mqtt.media_transport is request (which needs it), off otherwise",
    )
    path: Path | None = Field(
        default=None, description="directory of the store; default: media/ beside outbox.path"
    )
    max_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024 * 1024,
        description="size of the store on disk at most; the oldest media go first",
    )
    retention: float = Field(
        default=7 * 24 * 3600.0, gt=0,
        description="seconds media are kept at most, even with room to spare",
    )
    latest_snapshot: bool = Field(
        default=False,
        description="publish each camera's latest event image, retained, on "
        "snapshots/{camera} and snapshots/{camera}/{label} (what a dashboard shows)",
    )

    def active(self, media_transport: str) -> bool:
        """Whether the store keeps media: as configured, else when the transport needs it."""
        return self.enabled if self.enabled is not None else media_transport == "request"

    def directory(self, outbox_path: Path) -> Path:
        """The store's directory: ``path``, else ``media/`` beside the outbox (state dir)."""
        return self.path if self.path is not None else Path(outbox_path).parent / "media"


def media_problems(media: MediaConfig, media_transport: str) -> list[str]:
    """Problems between ``media:`` and ``mqtt:``, one line each."""
    if media_transport == "request" and media.enabled is False:
        return ["media.enabled: false, but mqtt.media_transport: request serves media from "
                "the store; turn the store on or choose inline or topic"]
    return []
