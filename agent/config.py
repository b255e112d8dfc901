"""The agent's configuration: one YAML file plus ``EDGE_AGENT_*`` environment overrides.

Sections follow the data flow: device, sources (cameras, microphones, synthetic), models,
use cases, rules, outbox, mqtt, then stats and logging. Every model forbids unknown keys,
and errors are reported one line per problem, each naming the path of the key.
"""

from __future__ import annotations

import math
import os
import re
import socket
import ssl
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from agent.events.config import UseCaseConfig
from agent.ids import TopicId
from agent.inference.audio import AudioModelConfig, default_audio_models
from agent.inference.detector import DetectorModelConfig
from agent.media.config import MediaConfig, media_problems
from agent.mqtt.config import MqttConfig
from agent.ops_config import CommandsConfig, HomeAssistantConfig
from agent.outbox.config import OutboxConfig
from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules
from agent.sources.camera import CameraConfig, infer_type
from agent.sources.config import SourceCommon, SyntheticConfig
from agent.sources.microphone import MicrophoneConfig, validate_listen

EX_CONFIG = 78
"""sysexits.h: configuration error; systemd shows it as such."""

MAX_CONFIG_BYTES = 1024 * 1024
"""A configuration file larger than this (1 MiB) is refused before it is parsed."""

MAX_CONFIG_NODES = 100_000
"""Values in the file once YAML aliases are expanded; a real configuration has a few
thousand. Bounds what a small file of nested aliases (an "alias bomb") can cost."""

MAX_CONFIG_DEPTH = 32
"""Nesting levels; the deepest real key (``use_cases.X.metadata.Y.type``) is 5."""

ENV_PREFIX = "EDGE_AGENT_"

REPO_ROOT = Path(__file__).resolve().parent.parent


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


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_text_file(path: Path, limit: int, what: str = "file", secret: bool = False) -> str:
    """A small regular UTF-8 text file, checked before reading: never blocks on a FIFO, never
    reads a device or more than ``limit`` bytes. Raises ``ConfigError`` with one line, which
    shows no byte of the file when it is ``secret``."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError([f"{path}: is {_file_kind(info.st_mode)}, not a regular {what}"])
    with os.fdopen(fd, "rb") as f:
        if info.st_size > limit:
            raise ConfigError([f"{path}: {info.st_size} bytes is larger than the limit of "
                               f"{limit} bytes for a {what}"])
        try:
            raw = f.read(limit + 1)
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > limit:
        raise ConfigError([f"{path}: larger than the limit of {limit} bytes for a {what}"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        shown = "" if secret else f" (0x{raw[exc.start]:02x})"
        raise ConfigError([f"{path}: byte {exc.start} (line {line}): not UTF-8{shown}; the "
                           f"{what} must be UTF-8 text"]) from None


# libyaml's parser where PyYAML has it (it does on every supported platform): the pure
# Python one takes 25 s and 360 MB for a 900 KB flow list.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _precheck(text: str, path: Path) -> None:
    """Walk the YAML event stream (flat, no recursion, nothing built) and refuse deep
    nesting or too many values before anything is composed."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=_Loader), 1):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH + 1:
                where = _where(path, event.start_mark)
                raise ConfigError([f"{where}: invalid YAML: nested more than "
                                   f"{MAX_CONFIG_DEPTH} levels deep"])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        if count > 2 * MAX_CONFIG_NODES:  # keys are events too
            raise ConfigError([f"{_where(path, event.start_mark)}: more than "
                               f"{MAX_CONFIG_NODES} values"])


def _where(path: Path, mark: Any) -> str:
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse the YAML file into a mapping, with errors that name the file and line.

    Refused before parsing: anything but a regular file, more than ``MAX_CONFIG_BYTES``, bytes
    that are not UTF-8. Refused after parsing, before validation: more than
    ``MAX_CONFIG_NODES`` values once aliases are expanded, nesting deeper than
    ``MAX_CONFIG_DEPTH``, an alias that contains itself.
    """
    text = read_text_file(path, MAX_CONFIG_BYTES, "configuration file")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        _precheck(text, path)
        data = yaml.load(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError([f"{path}: character {exc.position}: invalid YAML: unacceptable "
                           f"character #x{char:04x}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid YAML: nested too deeply (at most "
                           f"{MAX_CONFIG_DEPTH} levels)"]) from None
    except (ValueError, OverflowError) as exc:  # a scalar PyYAML resolves but cannot build
        raise ConfigError([f"{path}: invalid YAML value: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


class _TooBig(Exception):
    pass


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def tree_problems(data: Any) -> tuple[list[str], list[str]]:
    """Problems in the parsed YAML itself, before any schema: keys that are not strings,
    numbers that are infinite or NaN, too deep, too many values once aliases are expanded.

    Aliases are shared objects after parsing, so sizes are counted once per object and
    multiplied, never expanded: a billion-value alias bomb costs a few hundred steps.
    Returns ``(fatal, other)``: fatal problems stop before the schema is applied.
    """
    fatal: list[str] = []
    problems: list[str] = []
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def walk(node: Any, path: str, depth: int) -> int:
        if isinstance(node, float) and not math.isfinite(node):
            problems.append(f"{path or 'top level'}: {node} is not a finite number")
            return 1
        if isinstance(node, str) and "\0" in node:  # no path, id or URL may hold one
            fatal.append(f"{path or 'top level'}: contains a NUL character")
            return 1
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _TooBig(f"{path}: an alias contains itself (a recursive structure)")
        if depth > MAX_CONFIG_DEPTH:
            raise _TooBig(f"{path}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        open_.add(key)
        total = 1
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for k, value in items:
            if isinstance(node, dict) and isinstance(k, str) and "\0" in k:
                fatal.append(f"{_join(path, repr(k))}: contains a NUL character")
                continue
            if isinstance(node, dict) and not isinstance(k, str):
                fatal.append(f"{_join(path, repr(k))}: keys must be strings, not "
                                f"{type(k).__name__} (quote the key)")
                continue
            total += walk(value, _join(path, k), depth + 1)
            if total > MAX_CONFIG_NODES:
                raise _TooBig(f"{path or 'top level'}: more than {MAX_CONFIG_NODES} values "
                              "once YAML aliases are expanded")
        open_.discard(key)
        sizes[key] = total
        return total

    try:
        walk(data, "", 0)
    except _TooBig as exc:
        return [str(exc)], []
    return fatal, problems


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
            raise ConfigError(_order_like_file(list(dict.fromkeys(lines)), keys)) from None
    finally:
        if env_backup is not None:
            os.environ.clear()
            os.environ.update(env_backup)
    config.rules = rules
    if path is not None:
        _resolve_relative_paths(config, path.parent)
    problems += cross_check(config) if rules_ok else []
    problems += [p for p in _origin_tagged(_nonfinite(config), env) if p not in problems]
    problems += run_checks(config)
    if problems:
        raise ConfigError(_order_like_file(list(dict.fromkeys(problems)), keys))
    return config


MAX_SECRET_BYTES = 64 * 1024
"""A password file or credential larger than this is refused (it is one line)."""


def _readable(path: Path, key: str) -> str | None:
    """Why ``path`` cannot serve as the file ``key`` names, or None when it can."""
    try:
        read_text_file(path, 16 * 1024 * 1024, "file")
    except ConfigError as exc:
        return f"{key}: {exc.lines[0]}"
    return None


def run_checks(config: AgentConfig) -> list[str]:
    """What ``run`` would trip on that the schema cannot see: the files the config names
    (TLS, password) and the outbox directory. A camera that is offline is not checked here:
    that is a run-time state."""
    problems: list[str] = []
    tls = config.mqtt.tls
    if tls.enabled:
        for key, path in (("mqtt.tls.ca_file", tls.ca_file), ("mqtt.tls.cert_file",
                          tls.cert_file), ("mqtt.tls.key_file", tls.key_file)):
            if path is not None and (why := _readable(path, key)):
                problems.append(why)
        if not problems:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            try:
                if tls.ca_file is not None:
                    context.load_verify_locations(cafile=str(tls.ca_file))
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(f"mqtt.tls.ca_file: {tls.ca_file}: not a usable CA file: "
                                f"{getattr(exc, 'reason', None) or exc}")
            try:
                if tls.cert_file is not None and tls.key_file is not None:
                    # A passphrase would be asked on the terminal; there is no key for one.
                    context.load_cert_chain(str(tls.cert_file), str(tls.key_file),
                                            password=lambda: b"")
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(f"mqtt.tls.cert_file: {tls.cert_file} with key_file "
                                f"{tls.key_file}: cannot be loaded (wrong pair, not PEM, or "
                                f"an encrypted key): {getattr(exc, 'reason', None) or exc}")
    try:
        read_mqtt_password(config.mqtt)
    except ConfigError as exc:
        problems.extend(exc.lines)
    problems.extend(_outbox_path_problems(config.outbox.path))
    return problems


def _outbox_path_problems(path: Path) -> list[str]:
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            return [f"outbox.path: {path}: {existing} is a dangling symbolic link"]
        existing = existing.parent
    if not existing.is_dir():
        where = "is not a directory" if existing == path else f"cannot be created: {existing} " \
            "is not a directory"
        return [f"outbox.path: {path} {where}"]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created in {existing} " \
            "(not writable)"
        return [f"outbox.path: {path} {what} by this user"]
    return []


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
    """The broker password from, in order: the config, ``password_file``, systemd credentials.

    Raises ``ConfigError`` (one line naming the key) for a file that is missing, unreadable,
    not a regular file, not UTF-8 or empty.
    """
    if config.password is not None:
        return config.password.get_secret_value()
    if config.password_file is not None:
        try:
            text = read_text_file(config.password_file, MAX_SECRET_BYTES, "password file",
                                  secret=True)
        except ConfigError as exc:
            raise ConfigError([f"mqtt.password_file: {exc.lines[0]}"]) from None
        lines = text.splitlines()
        if not lines:
            raise ConfigError([f"mqtt.password_file: {config.password_file}: empty (the "
                               "password is its first line)"])
        return lines[0].strip()
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / config.password_credential
        if candidate.is_file():
            try:
                text = read_text_file(candidate, MAX_SECRET_BYTES, "credential", secret=True)
            except ConfigError as exc:
                raise ConfigError([f"mqtt.password_credential: {exc.lines[0]}"]) from None
            # The unit's fallback credential is a lone newline: that means "no password".
            lines = text.splitlines()
            return (lines[0].strip() if lines else "") or None
    return None


__all__ = [
    "EX_CONFIG",
    "MAX_CONFIG_BYTES",
    "AgentConfig",
    "ConfigError",
    "load_config",
    "read_mqtt_password",
]
