"""The real agent as a child process, the way systemd runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    """``python -m agent run -c FILE`` with its stderr in a file."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None
                 ) -> None:
        self.workdir = workdir
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> AgentProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(self.config_path)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 15) -> bool:
        """Wait until ``needle`` appears in the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return needle in self.log
            time.sleep(0.05)
        return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def base_config(workdir: Path, port: int, **sections: Any) -> dict[str, Any]:
    """A config for tests: local broker, outbox in ``workdir``, fast reconnects."""
    config: dict[str, Any] = {
        "device": {"id": "test-edge"},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2,
                 "reconnect_max_s": 1.0, "keepalive": 5},
        "outbox": {"path": str(workdir / "outbox")},
        "stats": {"interval": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def events_of(messages: list[Any], source: str = "") -> list[dict[str, Any]]:
    """Parsed event payloads from a recorder's messages (optionally of one source)."""
    return [json.loads(m.payload) for m in messages
            if "/events/" in m.topic and m.topic.endswith(f"/events/{source}" if source else "")]
