"""Reads the configuration file defensively: a regular UTF-8 file of bounded size, and YAML
that cannot expand, nest or alias its way into gigabytes before the schema sees it."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024
"""A configuration file larger than this (1 MiB) is refused before it is parsed."""

MAX_CONFIG_NODES = 100_000
"""Values in the file once YAML aliases are expanded; a real configuration has a few
thousand. Bounds what a small file of nested aliases (an "alias bomb") can cost."""

MAX_CONFIG_DEPTH = 32
"""Nesting levels; the deepest real key (``use_cases.X.metadata.Y.type``) is 5."""


class ConfigError(Exception):
    """An invalid configuration; ``lines`` holds one message per problem, each with its path."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


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

