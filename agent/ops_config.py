"""Configuration of runtime operations: MQTT commands (``commands:``) and Home Assistant
discovery (``homeassistant:``). The code lives in ``agent.mqtt.commands`` and
``agent.mqtt.discovery``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CommandName = Literal[
    "sources.detection",
    "sources.thresholds",
    "sources.snapshot",
    "rules.enabled",
    "config.reload",
    "stats.publish",
    "media.get",
]
"""Every command the agent understands, as named in ``commands.allow``."""

COMMAND_NAMES: tuple[str, ...] = CommandName.__args__  # type: ignore[attr-defined]

_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CommandsConfig(BaseModel):
    """Commands on ``{prefix}/{device}/set/...``; results on ``.../result/...``.

    The broker's ACLs decide who may publish commands; ``allow`` narrows what this device
    accepts even from a client the broker lets through.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    allow: list[CommandName] | None = Field(
        default=None, description="command names accepted; all when unset, none when []"
    )


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery: the agent, its sources and rules as HA entities."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    discovery_prefix: str = Field(default="homeassistant",
                                  description="HA's discovery prefix (its MQTT integration)")
    node_id: str | None = Field(
        default=None, description="topic level naming this device; default: device.id, "
        "with characters HA does not accept replaced by '_'"
    )

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.endswith("/"):
            raise ValueError("must be a topic without # or + and without a trailing /")
        return value

    @field_validator("node_id")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        if value is not None and not _NODE_ID.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_' and '-'")
        return value
