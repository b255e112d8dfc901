"""The agent's configuration: one YAML file plus ``EDGE_AGENT_*`` environment overrides.

Sections follow the data flow: device, sources (cameras, microphones, synthetic), models,
use cases, rules, outbox, mqtt, then stats and logging. Every model forbids unknown keys,
and errors are reported one line per problem, each naming the path of the key.

This module gathers each stage's configuration (``agent.<stage>.config``, none of which loads
numpy, OpenCV, onnxruntime or sounddevice) into ``AgentConfig``, checks what spans sections,
and loads the file: ``agent.config_file`` reads it defensively, ``agent.config_checks`` looks
at the files it names.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from agent.config_checks import read_mqtt_password, run_checks
from agent.config_file import MAX_CONFIG_BYTES, ConfigError, read_yaml, tree_problems
from agent.events.config import UseCaseConfig
from agent.ids import TopicId
from agent.inference.config import AudioModelConfig, DetectorModelConfig, default_audio_models
from agent.media.config import MediaConfig, media_problems
from agent.mqtt.config import CommandsConfig, HomeAssistantConfig, MqttConfig
from agent.outbox.config import OutboxConfig
from agent.paths import REPO_ROOT
from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules
from agent.sources.config import (
    CameraConfig,
    MicrophoneConfig,
    SourceCommon,
    SyntheticConfig,
    infer_type,
    validate_listen,
)

EX_CONFIG = 78
"""sysexits.h: configuration error; systemd shows it as such."""

ENV_PREFIX = "EDGE_AGENT_"


class DeviceConfig(BaseModel):
    """Who this device is; goes into every event."""

    model_config = ConfigDict(extra="forbid")

    id: TopicId = Field(default_factory=socket.gethostname, validate_default=True,
                        description="defaults to the hostname; one MQTT topic level")
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
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        # No nested_model_default_partial_update: it copied every YAML alias it met, which
        # let a 1 KB file take gigabytes. Nested defaults are default factories anyway.
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
    media: MediaConfig = Field(default_factory=MediaConfig)
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
    problems.extend(media_problems(config.media, config.mqtt.media_transport))
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



def _nonfinite(config: AgentConfig) -> list[tuple[tuple[int | str, ...], str]]:
    """Infinite or NaN numbers anywhere in the validated config (environment included)."""
    problems: list[tuple[tuple[int | str, ...], str]] = []

    def walk(node: Any, loc: tuple[int | str, ...]) -> None:
        if isinstance(node, float) and not math.isfinite(node):
            problems.append((loc, f"{_loc(loc)}: {node} is not a finite number"))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*loc, str(k)))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, (*loc, i))

    walk(config.model_dump(), ())
    return problems


def env_variable(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The ``EDGE_AGENT_*`` variable that set the key at ``loc``, if one did."""
    names = {name.upper(): name for name in environ if name.upper().startswith(ENV_PREFIX)}
    parts: list[str] = []
    found = None
    for part in loc:
        if isinstance(part, int):
            break
        parts.append(str(part).upper())
        name = names.get(ENV_PREFIX + "__".join(parts))
        if name is not None:
            found = name
    return found


def _settings_error_lines(exc: SettingsError, environ: Mapping[str, str]) -> list[str]:
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else None
    if field is None:
        return [f"environment: {exc}"]
    prefix = (ENV_PREFIX + field).upper()
    names = sorted(n for n in environ
                   if n.upper() == prefix or n.upper().startswith(prefix + "__"))
    what = "a JSON list" if field in ("cameras", "microphones", "synthetic", "rules") \
        else "a JSON object"
    return [f"{name} (environment): {field} takes {what}; this value is not valid JSON "
            "for it" for name in names or [prefix]]


def _origin_tagged(lines: list[tuple[tuple[int | str, ...], str]],
                   environ: Mapping[str, str]) -> list[str]:
    out = []
    for loc, line in lines:
        name = env_variable(loc, environ)
        out.append(f"{name} (environment): {line}" if name else line)
    return out


def _validation_lines(exc: ValidationError) -> list[tuple[tuple[int | str, ...], str]]:
    lines = format_validation_error(exc)
    locs = [tuple(p for p in err["loc"]
                  if not (isinstance(p, str) and p.startswith("function-")))
            for err in exc.errors(include_url=False, include_input=False)]
    return list(zip(locs, lines, strict=True))


_SOURCE_SECTIONS: dict[str, type[SourceCommon]] = {
    "cameras": CameraConfig, "microphones": MicrophoneConfig, "synthetic": SyntheticConfig}


def _partial_cross_check(data: dict[str, Any], rules: list[RuleConfig],
                         bad: list[tuple[int | str, ...]]) -> list[str]:
    """Cross-reference problems of a config that failed its schema, where it is valid enough:
    sections with errors take their defaults, an invalid source keeps only its id (so rules
    that name it are not reported), and nothing is said about the invalid parts themselves.
    """
    bad_sections = {str(loc[0]) for loc in bad if loc}
    if bad_sections & {"models", "use_cases", "device"}:
        return []
    good = {k: v for k, v in data.items() if k not in bad_sections}
    try:
        config = AgentConfig(**good)
    except (ValidationError, SettingsError):
        return []
    skip: list[str] = []
    for section, cls in _SOURCE_SECTIONS.items():
        items = data.get(section)
        if section not in bad_sections or not isinstance(items, list):
            continue
        built: list[Any] = []
        for i, raw in enumerate(items):
            try:
                built.append(cls.model_validate(raw))
                continue
            except ValidationError:
                pass
            raw_id = raw.get("id") if isinstance(raw, dict) else None
            sid = raw_id if isinstance(raw_id, str) else f"\0invalid-{section}-{i}"
            built.append(cls.model_construct(id=sid, use_case="default", model=None))
            skip.append(f"{section}[{i}]")
        setattr(config, section, built)
    config.rules = rules
    try:
        lines = cross_check(config)
    except Exception:  # a courtesy on a file already known to be invalid
        return []
    reported = [_loc(loc) for loc in bad] + skip
    return [line for line in lines
            if not any(line == r or line.startswith((r + ".", r + ":", r + "["))
                       for r in reported)]


def _order_like_file(lines: list[str], keys: list[str]) -> list[str]:
    """Problems in the order their sections appear in the file; environment-only last."""
    order = {key: i for i, key in enumerate(keys)}

    def rank(line: str) -> int:
        head = re.split(r"[.\[: ]", line, maxsplit=1)[0]
        return order.get(head, len(order))

    return sorted(lines, key=rank)


_NOT_FINITE = " is not a finite number"
_RULE_NAMED = re.compile(r"^(rules\[\d+\]) \([^)]*\)")


def _report(lines: list[str], keys: list[str]) -> list[str]:
    """The lines of a ``ConfigError``: once each, in the file's order, and one per key for
    a number that is not finite (the schema's own complaint about the same value, such
    as ``Input should be less than or equal to 240`` for ``.inf``, says less)."""
    def key(line: str) -> str:
        return _RULE_NAMED.sub(r"\1", line.split(": ", 1)[0])

    not_finite = {key(line) for line in lines if line.endswith(_NOT_FINITE)}
    kept = [line for line in dict.fromkeys(lines)
            if line.endswith(_NOT_FINITE) or key(line) not in not_finite]
    return _order_like_file(kept, keys)


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Load and validate the configuration; raises ``ConfigError`` with every problem.

    One pass reports everything it can: file and YAML problems stop it early; otherwise
    schema problems, rule problems and cross-references (where the rest is valid enough)
    come together, in the order of the file.
    """
    data = read_yaml(path) if path is not None else {}
    keys = [str(k) for k in data]
    fatal, tree = tree_problems(data)
    if fatal:
        raise ConfigError(_order_like_file(fatal, keys))
    env = os.environ if environ is None else environ
    # Rules are parsed by their own stage so errors name the rule: rules[2] (glass-burst).key
    raw_rules = data.pop("rules", None) or []
    problems: list[str] = list(tree)
    rules: list[RuleConfig] = []
    rules_ok = True
    try:
        rules = parse_rules(raw_rules)
    except RulesError as exc:
        problems.extend(exc.lines)
        rules_ok = False
    env_backup = None
    if environ is not None:
        env_backup = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        try:
            config = AgentConfig(**data)
        except SettingsError as exc:
            raise ConfigError(problems + _settings_error_lines(exc, env)) from None
        except ValidationError as exc:
            located = _validation_lines(exc)
            lines = _origin_tagged(located, env) + problems
            if rules_ok:
                lines += _partial_cross_check(data, rules, [loc for loc, _ in located])
            raise ConfigError(_report(lines, keys)) from None
    finally:
        if env_backup is not None:
            os.environ.clear()
            os.environ.update(env_backup)
    config.rules = rules
    if path is not None:
        _resolve_relative_paths(config, path.parent, env)
    problems += cross_check(config) if rules_ok else []
    problems += [p for p in _origin_tagged(_nonfinite(config), env) if p not in problems]
    problems += run_checks(config.mqtt, config.outbox.path)
    if problems:
        raise ConfigError(_report(problems, keys))
    return config


def _resolve_relative_paths(config: AgentConfig, base: Path, environ: Mapping[str, str]) -> None:
    """Relative file paths in the config mean "next to the config file", wherever run from.

    systemd starts the agent in ``/``, a shell wherever the user is: resolving against the
    working directory would put the outbox (and the rules state and media beside it) in a
    different place on each. A path set by an ``EDGE_AGENT_*`` variable is the caller's,
    so it is taken from the working directory, like any path given on a command line.
    """
    def resolved(loc: tuple[str, ...], value: Path) -> Path:
        if value.is_absolute():
            return value
        return ((Path.cwd() if env_variable(loc, environ) else base) / value).resolve()

    config.models.dir = resolved(("models", "dir"), config.models.dir)
    config.outbox.path = resolved(("outbox", "path"), config.outbox.path)
    if config.media.path is not None:
        config.media.path = resolved(("media", "path"), config.media.path)
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        mqtt.password_file = resolved(("mqtt", "password_file"), mqtt.password_file)
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(mqtt.tls, key)
        if value is not None:
            setattr(mqtt.tls, key, resolved(("mqtt", "tls", key), value))
    for camera in config.cameras:
        url = camera.url
        if url and not url.startswith("/") and (camera.type or infer_type(url)) in ("file",
                                                                                  "folder"):
            camera.url = str((base / url).resolve())
    for mic in config.microphones:
        if mic.file is not None and not mic.file.is_absolute():
            mic.file = (base / mic.file).resolve()


__all__ = [
    "EX_CONFIG",
    "MAX_CONFIG_BYTES",
    "AgentConfig",
    "ConfigError",
    "load_config",
    "read_mqtt_password",
]
