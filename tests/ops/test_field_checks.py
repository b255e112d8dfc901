"""The field checks (scripts/check-systemd.sh, scripts/check-arm64.sh, run by
``scripts/test.sh --field``) need root, debootstrap and minutes, so the default suite only
keeps them honest: shellcheck-clean, a help that needs no root, and the message analysis they
rely on for "nothing lost" tested against hand-made subscriber output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "scripts" / name for name in
           ("check-systemd.sh", "check-arm64.sh", "field/lib.sh",
            "field/onnxruntime-under-qemu.sh", "test.sh")]
MESSAGES = REPO / "scripts" / "field" / "messages.py"


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (scripts/setup.sh --dev installs it)")
def test_shellcheck_is_clean() -> None:
    proc = subprocess.run(["shellcheck", "-x", "--severity=style", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["check-systemd.sh", "check-arm64.sh"])
def test_help_names_every_check_without_running_anything(name: str) -> None:
    proc = subprocess.run(["bash", str(REPO / "scripts" / name), "--help"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "N passed, M failed" in proc.stdout
    assert "sudo scripts/" + name in proc.stdout


def line(topic: str, payload: object, retain: int = 0) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    # What `mosquitto_sub -F %j` writes: the payload as a JSON string.
    return json.dumps({"tst": "2026-01-01T00:00:00Z", "topic": topic, "qos": 1,
                       "retain": retain, "payloadlen": len(text), "payload": text})


def event(run: str, source: str, seq: int, kind: str = "synthetic", label: str = "person") -> str:
    return line(f"edge-agent/d/events/{source}",
                {"kind": kind, "run_id": run, "seq": seq, "source": {"id": source},
                 "label": {"id": label}})


def ask(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MESSAGES), str(path), *args],
                          capture_output=True, text=True, timeout=30)


def test_messages_finds_a_gap_and_forgives_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    lines = [event("r1", "cam", 0), event("r1", "cam", 1), event("r1", "cam", 1),  # QoS 1 dup
             event("r1", "cam", 3), event("r2", "cam", 0), event("r1", "mic", 0, "sound")]
    path.write_text("\n".join(lines) + "\n")
    proc = ask(path, "gaps")
    assert proc.returncode == 1
    assert "1 missing" in proc.stdout and "run r1 source cam: missing seq [2]" in proc.stdout

    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    proc = ask(path, "gaps")
    assert proc.returncode == 0, proc.stdout
    assert "0 missing" in proc.stdout


def test_messages_counts_statuses_kinds_and_runs_after_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    first = [line("edge-agent/d/status", "online", retain=1), event("r1", "cam", 0, "object")]
    path.write_text("\n".join(first) + "\n")
    offset = path.stat().st_size
    later = [line("edge-agent/d/status", "offline"),
             line("edge-agent/d/sources/cam/status", {"state": "running"}),
             line("edge-agent/d/status", "online"),
             event("r2", "cam", 0, "object", "car"), event("r2", "mic", 0, "sound", "siren"),
             '{"torn": ']  # a line cut short when the subscriber was killed
    with path.open("a") as f:
        f.write("\n".join(later))
    assert ask(path, "statuses").stdout.split() == ["online", "offline", "online"]
    assert ask(path, "statuses", "--since", str(offset)).stdout.split() == ["offline", "online"]
    assert ask(path, "kinds", "--since", str(offset)).stdout.split() == ["object=1", "sound=1"]
    assert ask(path, "runs").stdout.split() == ["r1", "r2"]
    assert ask(path, "labels", "object").stdout.split() == ["car=1", "person=1"]
    assert ask(path, "labels", "sound", "--since", str(offset)).stdout.split() == ["siren=1"]
    assert ask(path, "count", "cam", "--run", "r2").stdout.strip() == "1"
    assert ask(path, "count", "cam").stdout.strip() == "2"
