"""Configuration of the outbox (``outbox:``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OutboxConfig(BaseModel):
    """Where and how much the agent keeps while the broker cannot be reached."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(
        default=Path("/var/lib/edge-agent/outbox"),
        description="directory of the queue; systemd's StateDirectory in production",
    )
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    max_events: int | None = Field(default=None, ge=1)
    ttl: float | None = Field(default=None, gt=0, description="seconds; older events are dropped")
    on_full: Literal["drop_oldest", "reject_new", "shed_images"] = "drop_oldest"
    min_free_bytes: int = Field(
        default=16 * 1024 * 1024, ge=0,
        description="free space kept on the outbox's file system: below it the outbox stops "
                    "growing and makes room by on_full, before the file system refuses writes",
    )
    durability: Literal["full", "normal"] = Field(
        default="full",
        description="full: fsync every commit, survives power loss; normal: fewer writes",
    )
