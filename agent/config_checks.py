"""What ``run`` would trip on that the schema cannot see: the files the configuration names
(TLS, password) and the outbox directory; and reading the broker password."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.config_file import ConfigError, read_text_file
from agent.mqtt.config import MqttConfig

MAX_SECRET_BYTES = 64 * 1024
"""A password file or credential larger than this is refused (it is one line)."""


def _readable(path: Path, key: str) -> str | None:
    """Why ``path`` cannot serve as the file ``key`` names, or None when it can."""
    try:
        read_text_file(path, 16 * 1024 * 1024, "file")
    except ConfigError as exc:
        return f"{key}: {exc.lines[0]}"
    return None


def run_checks(mqtt: MqttConfig, outbox_path: Path) -> list[str]:
    """What ``run`` would trip on that the schema cannot see: the files the config names
    (TLS, password) and the outbox directory. A camera that is offline is not checked here:
    that is a run-time state."""
    problems: list[str] = []
    tls = mqtt.tls
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
        read_mqtt_password(mqtt)
    except ConfigError as exc:
        problems.extend(exc.lines)
    problems.extend(_outbox_path_problems(outbox_path))
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

