"""Configuration of the MQTT stage: the broker link (``mqtt:``), commands (``commands:``) and
Home Assistant discovery (``homeassistant:``). The code lives in ``agent.mqtt.link``,
``agent.mqtt.commands`` and ``agent.mqtt.discovery``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class TlsConfig(BaseModel):
    """TLS towards the broker. Hostname checking stays on unless turned off explicitly."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    ca_file: Path | None = Field(default=None, description="CA bundle; system CAs when unset")
    cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    key_file: Path | None = Field(default=None, description="client private key (PEM)")
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(BaseModel):
    """Broker connection, topics and delivery tuning."""

    model_config = ConfigDict(extra="forbid")

    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    client_id: str | None = Field(default=None, description="default: edge-agent-{device.id}")
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="prefer password_file")
    password_file: Path | None = Field(
        default=None, description="file holding the password (first line)"
    )
    password_credential: str = Field(
        default="mqtt_password",
        description="name of the systemd credential ($CREDENTIALS_DIRECTORY/NAME) to read",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig)
    topic_prefix: str = "edge-agent"
    qos: Literal[0, 1] = 1
    keepalive: int = Field(default=30, ge=5, le=3600)
    max_inflight: int = Field(default=20, ge=1, le=1000)
    media_transport: Literal["inline", "topic", "request"] = Field(
        default="inline",
        description="inline: images/clips as base64 inside the event (self-contained, atomic); "
        "topic: raw bytes on media/{source}/{event}/{role}, referenced from the event; "
        "request: metadata only, bytes kept in the media store and sent on set/media/get",
    )
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if any(c in self.topic_prefix for c in "#+") or self.topic_prefix.endswith("/"):
            raise ValueError("topic_prefix must not contain # or + nor end with /")
        return self


# -- commands and Home Assistant ----------------------------------------------------------------

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
