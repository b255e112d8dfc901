"""Configuration of the MQTT stage (``mqtt:``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


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
