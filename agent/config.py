"""The agent's configuration: one YAML file plus ``EDGE_AGENT_*`` environment overrides.

Sections follow the data flow: device, sources (cameras, microphones, synthetic), models,
use cases, rules, outbox, mqtt, then stats and logging. Every model forbids unknown keys,
and errors are reported one line per problem, each naming the path of the key.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agent.events.config import UseCaseConfig
from agent.mqtt.config import MqttConfig
from agent.outbox.config import OutboxConfig
from agent.sources.config import SourceCommon, SyntheticConfig

EX_CONFIG = 78
"""sysexits.h: configuration error; systemd shows it as such."""

REPO_ROOT = Path(__file__).resolve().parent.parent


class DeviceConfig(BaseModel):
    """Who this device is; goes into every event."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=socket.gethostname, description="defaults to the hostname")
    site: str | None = None
    location: str | None = None


class ModelsConfig(BaseModel):
    """Where model files live."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(default=REPO_ROOT / "models", description="model files and labels/")


class StatsConfig(BaseModel):
    """The periodic stats document on ``.../stats``."""

    model_config = ConfigDict(extra="forbid")

    interval: float = Field(default=60.0, gt=0, description="seconds between stats messages")


class LoggingConfig(BaseModel):
    """Logging to stderr (the journal under systemd)."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AgentConfig(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_AGENT_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    synthetic: list[SyntheticConfig] = Field(default_factory=list)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    use_cases: dict[str, UseCaseConfig] = Field(
        default_factory=lambda: {"default": UseCaseConfig(strict=False)}
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML content arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    def all_sources(self) -> list[SourceCommon]:
        """Every configured source, of every kind."""
        return [source for _, source in self.source_paths()]

    def source_paths(self) -> list[tuple[str, SourceCommon]]:
        """Every source with its path in the file, e.g. ``("cameras[0]", camera)``."""
        return [(f"synthetic[{i}]", s) for i, s in enumerate(self.synthetic)]


def cross_check(config: AgentConfig) -> list[str]:
    """Problems that span sections (ids, references between sections); one line each."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path, source in config.source_paths():
        if source.id in seen:
            problems.append(f"{path}.id: {source.id!r} is already used by {seen[source.id]}")
        seen.setdefault(source.id, path)
        if source.use_case not in config.use_cases:
            problems.append(
                f"{path}.use_case: {source.use_case!r} is not in use_cases "
                f"(have: {', '.join(sorted(config.use_cases))})"
            )
    return problems


class ConfigError(Exception):
    """An invalid configuration; ``lines`` holds one message per problem, each with its path."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem: ``mqtt.port: Input should be a valid integer``."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        # Drop the union/tag member names pydantic inserts; they are not YAML keys.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = _loc(loc)
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse the YAML file into a mapping, with errors that name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Load and validate the configuration; raises ``ConfigError`` with every problem."""
    data = read_yaml(path) if path is not None else {}
    env_backup = None
    if environ is not None:
        env_backup = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        config = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc
    finally:
        if env_backup is not None:
            os.environ.clear()
            os.environ.update(env_backup)
    if path is not None and not config.models.dir.is_absolute():
        config.models.dir = (path.parent / config.models.dir).resolve()
    problems = cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def read_mqtt_password(config: MqttConfig) -> str | None:
    """The broker password from, in order: the config, ``password_file``, systemd credentials."""
    if config.password is not None:
        return config.password.get_secret_value()
    if config.password_file is not None:
        try:
            return config.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(
                [f"mqtt.password_file: cannot read {config.password_file}: {exc}"]
            ) from None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / config.password_credential
        if candidate.is_file():
            # The unit's fallback credential is a lone newline: that means "no password".
            lines = candidate.read_text(encoding="utf-8").splitlines()
            return (lines[0].strip() if lines else "") or None
    return None


__all__ = [
    "EX_CONFIG",
    "AgentConfig",
    "ConfigError",
    "load_config",
    "read_mqtt_password",
]
