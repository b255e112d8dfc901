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
from agent.inference.audio import AudioModelConfig, default_audio_models
from agent.inference.detector import DetectorModelConfig
from agent.mqtt.config import MqttConfig
from agent.ops_config import CommandsConfig, HomeAssistantConfig
from agent.outbox.config import OutboxConfig
from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules
from agent.sources.camera import CameraConfig, infer_type
from agent.sources.config import SourceCommon, SyntheticConfig
from agent.sources.microphone import MicrophoneConfig, validate_listen

EX_CONFIG = 78
"""sysexits.h: configuration error; systemd shows it as such."""

REPO_ROOT = Path(__file__).resolve().parent.parent


class DeviceConfig(BaseModel):
    """Who this device is; goes into every event."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=socket.gethostname, description="defaults to the hostname")
    site: str | None = None
    location: str | None = None


def default_detectors() -> dict[str, DetectorModelConfig]:
    """The ``models.detectors`` default: YOLOv3-tiny as ``edge-agent models fetch`` builds it."""
    return {"yolov3-tiny-coco": DetectorModelConfig(path=Path("yolov3-tiny-coco.onnx"))}


class ModelsConfig(BaseModel):
    """Where model files live, and the models sources can refer to by name."""

    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(default=REPO_ROOT / "models", description="model files and labels/")
    detectors: dict[str, DetectorModelConfig] = Field(default_factory=default_detectors)
    audio: dict[str, AudioModelConfig] = Field(default_factory=default_audio_models)

    @property
    def labels_dir(self) -> Path:
        """The label catalogue (``labels/`` under ``dir``, else the repository's)."""
        here = self.dir / "labels"
        return here if here.is_dir() else REPO_ROOT / "models" / "labels"


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
    cameras: list[CameraConfig] = Field(default_factory=list)
    microphones: list[MicrophoneConfig] = Field(default_factory=list)
    synthetic: list[SyntheticConfig] = Field(default_factory=list)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    use_cases: dict[str, UseCaseConfig] = Field(
        default_factory=lambda: {"default": UseCaseConfig(strict=False)}
    )
    rules: list[RuleConfig] = Field(
        default_factory=list, description="composite rules; parsed by agent.rules.parse_rules"
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    commands: CommandsConfig = Field(default_factory=CommandsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
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
        return [
            *((f"cameras[{i}]", s) for i, s in enumerate(self.cameras)),
            *((f"microphones[{i}]", s) for i, s in enumerate(self.microphones)),
            *((f"synthetic[{i}]", s) for i, s in enumerate(self.synthetic)),
        ]


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
    for i, camera in enumerate(config.cameras):
        if camera.model not in config.models.detectors:
            problems.append(f"cameras[{i}].model: {camera.model!r} is not in models.detectors "
                            f"(have: {', '.join(sorted(config.models.detectors))})")
    if config.rules:
        by_kind: dict[str, set[str]] = {"camera": set(), "microphone": set()}
        for camera in config.cameras:
            by_kind["camera"].add(camera.id)
        for mic in config.microphones:
            by_kind["microphone"].add(mic.id)
        for synthetic in config.synthetic:
            by_kind.setdefault(synthetic.kind, set()).add(synthetic.id)
        label_ids = _catalogue_ids(config, "coco") | _catalogue_ids(config, "audioset")
        label_ids |= {label for s in config.synthetic for label in s.labels}
        label_ids |= _label_file_ids(config)
        problems.extend(validate_rules(
            config.rules, label_ids=label_ids, mic_ids=by_kind["microphone"],
            camera_ids=by_kind["camera"], use_cases=set(config.use_cases)))
    audioset_ids: set[str] | None = None
    for i, mic in enumerate(config.microphones):
        model = config.models.audio.get(mic.model)
        if model is None:
            problems.append(f"microphones[{i}].model: {mic.model!r} is not in models.audio "
                            f"(have: {', '.join(sorted(config.models.audio))})")
        elif model.labels == "audioset":
            if audioset_ids is None:
                audioset_ids = _catalogue_ids(config, "audioset")
            problems.extend(p.replace(f"microphones.{mic.id}.", f"microphones[{i}].", 1)
                            for p in validate_listen(mic, audioset_ids))
    return problems


def _label_file_ids(config: AgentConfig) -> set[str]:
    """Label ids of the models with their own label file (a classifier's good/bad), as
    events carry them; an unreadable file is the camera's error at start, not this check's."""
    from agent.labels import slugify

    ids: set[str] = set()
    for model in config.models.detectors.values():
        if model.labels == "coco":
            continue
        path = Path(model.labels)
        path = path if path.is_absolute() else config.models.dir / path
        try:
            ids |= {slugify(n.strip()) for n in path.read_text(encoding="utf-8").splitlines()
                    if n.strip()}
        except (OSError, UnicodeDecodeError):
            continue
    return ids


def _catalogue_ids(config: AgentConfig, which: str) -> set[str]:
    from agent.labels import LabelCatalogue, LabelCatalogueError

    try:
        catalogue = LabelCatalogue.load(config.models.labels_dir)
    except LabelCatalogueError as exc:
        raise ConfigError([f"models.dir: {exc}"]) from None
    return {info.id for info in (catalogue.audioset() if which == "audioset" else catalogue.coco())}


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
    # Rules are parsed by their own stage so errors name the rule: rules[2] (glass-burst).key
    raw_rules = data.pop("rules", None) or []
    problems: list[str] = []
    rules: list[RuleConfig] = []
    try:
        rules = parse_rules(raw_rules)
    except RulesError as exc:
        problems.extend(exc.lines)
    env_backup = None
    if environ is not None:
        env_backup = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        config = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc) + problems) from exc
    finally:
        if env_backup is not None:
            os.environ.clear()
            os.environ.update(env_backup)
    if problems:
        raise ConfigError(problems)
    config.rules = rules
    if path is not None:
        _resolve_relative_paths(config, path.parent)
    problems = cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _resolve_relative_paths(config: AgentConfig, base: Path) -> None:
    """Relative file paths in the config mean "next to the config file", wherever run from."""
    if not config.models.dir.is_absolute():
        config.models.dir = (base / config.models.dir).resolve()
    for camera in config.cameras:
        url = camera.url
        if url and not url.startswith("/") and (camera.type or infer_type(url)) in ("file",
                                                                                  "folder"):
            camera.url = str((base / url).resolve())
    for mic in config.microphones:
        if mic.file is not None and not mic.file.is_absolute():
            mic.file = (base / mic.file).resolve()


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
