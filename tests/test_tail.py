"""``edge-agent tail --save-media``: the pictures and clips a person opens beside the lines."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.tail import format_message
from scripts.harness.agent_process import REPO, AgentProcess, base_config, events_of
from scripts.harness.broker import Broker

DEMO = REPO / "demo"


@pytest.fixture(scope="module")
def demo_media() -> Path:
    if not (DEMO / "street.avi").is_file() or not (DEMO / "sounds.wav").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    return DEMO


def _tail(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "tail", "-c", str(config), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["inline", "topic"])
def test_save_media_writes_each_events_files_named_on_its_line(
        tmp_path: Path, broker: Broker, recorder: Any, demo_media: Path, transport: str) -> None:
    rec = recorder("edge-agent/test-edge/events/#")
    config = base_config(
        tmp_path, broker.port, mqtt={"media_transport": transport},
        cameras=[{"id": "street", "url": str(demo_media / "street.avi"), "fps": 5,
                  "objects": {"track": ["person"]}}],
        microphones=[{"id": "mic", "file": str(demo_media / "sounds.wav"), "realtime": False,
                      "listen": ["siren"]}])
    agent = AgentProcess(tmp_path, config)
    media_dir = tmp_path / "media" / "nested"  # created by tail
    tail = _tail(agent.config_path, "--save-media", str(media_dir), "--timeout", "90")
    try:
        assert tail.stdout is not None
        assert "watching" in tail.stdout.readline()
        agent.start()

        def complete(ms: list[Any]) -> bool:
            kinds = {(e["kind"], m["role"]) for e in events_of(ms)
                     for m in [*e["images"], *([e["audio"]] if e["audio"] else [])]}
            return {("object", "annotated"), ("object", "input"), ("sound", "clip")} <= kinds

        assert rec.wait_for(complete, 60), agent.log
        time.sleep(1.0)  # tail receives what the recorder received
    finally:
        agent.stop()
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=20)
    assert tail.returncode == 0, err
    assert "Traceback" not in err

    lines = out.splitlines()
    assert lines[-1].endswith(f"media files under {media_dir}")
    saved = {p.name: p.read_bytes() for p in media_dir.iterdir()}
    named_on_lines: set[str] = set()
    for event in events_of(rec.messages):
        media = [*event["images"], *([event["audio"]] if event["audio"] else [])]
        if not media:
            continue
        line = next((ln for ln in lines if f" id {event['id'][:8]}" in ln), None)
        if line is None:
            continue  # published after tail stopped
        names = line.split(" -> ", 1)[1].split(", ")
        named_on_lines.update(names)
        assert len(names) == len(media), line
        for item, name in zip(media, names, strict=True):
            clock = re.match(r"(\d\d):(\d\d):(\d\d) ", line)
            assert clock is not None
            assert name.startswith("".join(clock.groups()) + f"-{event['source']['id']}-")
            assert f"-{event['id'][:8]}-{item['role']}." in name
            assert name.endswith(".jpg" if item["content_type"] == "image/jpeg" else ".wav")
            # The exact bytes the agent published, whichever way they travelled.
            assert hashlib.sha256(saved[name]).hexdigest() == item["sha256"]
    assert named_on_lines == set(saved)
    assert any(n.endswith("-annotated.jpg") for n in saved)
    assert any(n.endswith("-clip.wav") for n in saved)


def test_save_media_into_an_unwritable_place_is_one_clear_error(
        tmp_path: Path, broker: Broker) -> None:
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    tail = _tail(agent.config_path, "--save-media", str(blocker / "media"), "--timeout", "5")
    out, err = tail.communicate(timeout=30)
    assert tail.returncode == 2
    assert err.strip().splitlines() == [
        f"tail: --save-media: cannot write media under {blocker / 'media'}: Not a directory"]
    assert "watching" not in out


def test_a_stats_line_names_only_the_drops_that_happened() -> None:
    stats = {"outbox": {"depth": 7}, "sources": {"a": {}, "b": {}},
             "drops": {"full_drop_oldest": 0, "ttl": 3, "disk_full": 0, "too_large": 1}}
    line = format_message("stats", json.dumps(stats).encode())
    assert line == "stats  outbox 7 queued, drops: ttl 3, too_large 1, 2 sources"
    quiet = {**stats, "drops": dict.fromkeys(stats["drops"], 0)}
    assert format_message("stats", json.dumps(quiet).encode()) == (
        "stats  outbox 7 queued, drops: none, 2 sources")
