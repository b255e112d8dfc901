"""Configuration: YAML plus environment, and one clear line per problem naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from agent.config import EX_CONFIG, AgentConfig, ConfigError, load_config, read_mqtt_password

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    return info.value.lines


def test_example_and_demo_configs_are_valid() -> None:
    for name in ("agent.example.yaml", "demo.yaml"):
        load_config(REPO / "config" / name, environ={})


def test_defaults_need_no_file() -> None:
    config = load_config(None, environ={})
    assert config.mqtt.port == 1883 and config.outbox.on_full == "drop_oldest"
    assert config.device.id  # the hostname


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt:\n  port: abc\n", "mqtt.port: Input should be a valid integer"),
        ("mqtt:\n  prot: 1884\n", "mqtt.prot: Extra inputs are not permitted"),
        ("nonsense: 1\n", "nonsense: Extra inputs are not permitted"),
        ("outbox:\n  on_full: explode\n", "outbox.on_full: Input should be 'drop_oldest'"),
        ("synthetic:\n  - id: s1\n    rate: 0\n",
         "synthetic[0].rate: Input should be greater than 0"),
        ("cameras:\n  - id: c1\n    url: /tmp/x.avi\n    model: nope\n",
         "cameras[0].model: 'nope' is not in models.detectors"),
        ("microphones:\n  - id: m1\n    file: x.wav\n    listen: [glas]\n",
         "microphones[0].listen: unknown label 'glas'"),
        ("rules:\n  - id: r1\n    window_seconds: 0\n    min_events: 2\n",
         "rules[0] (r1).window_seconds: must be greater than 0"),
        ("synthetic:\n  - {id: s1, kind: microphone}\nrules:\n"
         "  - {id: r1, window_seconds: 5, min_events: 2, include_mic_ids: [mic-9]}\n",
         "rules[0] (r1).include_mic_ids: unknown microphone 'mic-9'"),
        ("synthetic:\n  - id: 'a/b'\n", "synthetic[0].id: Value error, must be"),
        ("synthetic:\n  - id: s1\n  - id: s1\n",
         "synthetic[1].id: 's1' is already used by synthetic[0]"),
        ("synthetic:\n  - id: s1\n    use_case: nope\n",
         "synthetic[0].use_case: 'nope' is not in use_cases"),
        ("mqtt:\n  tls:\n    enabled: true\n    cert_file: /x.pem\n",
         "mqtt.tls: Value error, cert_file and key_file go together"),
        # Not finite: the one line says so, not the schema's bound as well.
        ("cameras:\n  - {id: c1, url: /tmp/x.avi, fps: .inf}\n",
         "cameras[0].fps: inf is not a finite number"),
        ("rules:\n  - {id: r1, window_seconds: 5, min_events: 1, max_events: .inf}\n",
         "rules[0].max_events: inf is not a finite number"),
    ],
)
def test_each_bad_key_gives_one_line_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    lines = errors(tmp_path, text)
    assert len(lines) == 1, lines
    assert lines[0].replace("Value error, ", "").startswith(expected.replace("Value error, ", ""))


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    lines = errors(tmp_path, "mqtt:\n  port: abc\n  foo: 1\noutbox:\n  max_events: 0\n")
    assert len(lines) == 3
    assert {line.split(":")[0] for line in lines} == {"mqtt.port", "mqtt.foo", "outbox.max_events"}


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    lines = errors(tmp_path, "mqtt:\n  host: [unclosed\n")
    assert len(lines) == 1 and "agent.yaml:" in lines[0] and "invalid YAML" in lines[0]


def test_environment_overrides_nested_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: a\n  port: 1884\n")
    config = load_config(path, environ={"EDGE_AGENT_MQTT__HOST": "broker"})
    assert (config.mqtt.host, config.mqtt.port) == ("broker", 1884)


def test_relative_paths_are_next_to_the_file_wherever_the_agent_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "pw").write_text("s3cret\n")
    (conf / "ca.pem").write_text("not read here\n")
    path = conf / "agent.yaml"
    path.write_text("outbox:\n  path: state/outbox\nmedia:\n  path: ../media\n"
                    "mqtt:\n  password_file: pw\n  tls:\n    ca_file: ca.pem\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as systemd starts it in /, a user anywhere
    config = load_config(path, environ={})
    assert config.outbox.path == conf / "state" / "outbox"
    assert config.media.path == tmp_path / "media"
    assert config.mqtt.tls.ca_file == conf / "ca.pem"
    assert read_mqtt_password(config.mqtt) == "s3cret"
    assert not (elsewhere / "state").exists()
    # A path from the environment is the caller's: from the working directory.
    from_env = load_config(path, environ={"EDGE_AGENT_OUTBOX__PATH": "queue"})
    assert from_env.outbox.path == elsewhere / "queue"
    assert from_env.media.path == tmp_path / "media"


def test_password_from_file_and_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = load_config(write(tmp_path, f"mqtt:\n  password_file: {secret}\n"), environ={})
    assert read_mqtt_password(config.mqtt) == "s3cret"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("fromcred\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_mqtt_password(load_config(None, environ={}).mqtt) == "fromcred"


def test_password_is_not_printed_with_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "mqtt:\n  password: hunter2\n"), environ={})
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check-config", "-c", str(REPO / "config" / "demo.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("check-config", "-c", str(write(tmp_path, "mqtt:\n  port: abc\n")))
    assert bad.returncode == EX_CONFIG
    assert "mqtt.port: Input should be a valid integer" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_run_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = run_cli("run", "-c", str(write(tmp_path, "mqtt:\n  port: abc\nfoo: 1\n")))
    assert bad.returncode == EX_CONFIG and "foo: Extra inputs are not permitted" in bad.stderr


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every key a config model accepts, through nested models, lists and dicts."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        stack = [field.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                names |= _field_names(tp, seen)
            stack.extend(get_args(tp))
    return names


def test_the_example_config_documents_every_key() -> None:
    text = (REPO / "config" / "agent.example.yaml").read_text()
    key = r"(?:^\s*(?:#\s*)?-?\s*|[{,]\s*)([a-z_0-9]+):"  # block keys and flow-mapping keys
    documented = set(re.findall(key, text, re.MULTILINE))
    missing = _field_names(AgentConfig) - documented
    assert not missing, f"config/agent.example.yaml does not mention: {sorted(missing)}"
