"""config/starter.yaml, the agent.yaml a fresh install.sh writes: it opens nothing it was not
told to (broker on localhost, no camera, no microphone), and its commented examples are valid
once uncommented. Example addresses anywhere in the docs are documentation names."""

from __future__ import annotations

import re
from pathlib import Path

from agent.config import load_config

REPO = Path(__file__).resolve().parents[2]
STARTER = REPO / "config" / "starter.yaml"

# The loopback names: the only hosts a fresh install may connect to.
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def uncommented(text: str) -> str:
    """The starter with its commented YAML blocks (``# key:`` at column 0 up to the next blank
    line) turned into YAML, as a user following its instructions would."""
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if re.match(r"^# [a-z_]+:\s*$", line):
            in_block = True
        elif not line.strip():
            in_block = False
        if in_block:
            line = line[2:]
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_starter_connects_only_to_localhost_and_opens_no_source(tmp_path: Path) -> None:
    config = load_config(STARTER, environ={})
    assert config.mqtt.host in LOOPBACK
    assert config.all_sources() == []
    assert config.mqtt.password is None and config.mqtt.password_file is None
    assert not config.homeassistant.enabled


def test_the_starter_examples_are_valid_once_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(uncommented(STARTER.read_text()))
    config = load_config(path, environ={})
    kinds = {type(s).__name__ for s in config.all_sources()}
    assert kinds == {"CameraConfig", "MicrophoneConfig"}
    assert config.device.id == "edge-01"
    assert config.mqtt.host in LOOPBACK


def test_documented_addresses_are_not_private_ones() -> None:
    """Examples use documentation names (camera.example); a private address in an example
    is a real host on somebody's network."""
    private = re.compile(r"(?<![\d.])(?:10(?:\.\d{1,3}){3}|192\.168(?:\.\d{1,3}){2}"
                         r"|172\.(?:1[6-9]|2\d|3[01])(?:\.\d{1,3}){2})(?![\d.])")
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "config").glob("*.yaml")), REPO / "systemd" / "README.md"]
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}"
             for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
             if private.search(line)]
    assert not found, "\n".join(found)
