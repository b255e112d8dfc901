"""The retained latest snapshot per camera (and label), and its Home Assistant image entity."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load_config
from agent.mqtt.discovery import discovery_messages
from scripts.harness.agent_process import REPO, AgentProcess, base_config, events_of
from scripts.harness.broker import Broker, Recorder

BASE = "edge-agent/test-edge"
IMAGE_CONFIG = "homeassistant/image/test-edge/street_snapshot/config"


def cameras(url: str) -> list[dict[str, Any]]:
    return [{"id": "street", "url": url, "fps": 5, "loop": url.endswith(".avi"),
             "objects": {"track": ["person"]}}]


def test_the_image_entity_is_announced_only_with_latest_snapshot(tmp_path: Path) -> None:
    jinja2 = pytest.importorskip("jinja2")
    off = AgentConfig(**base_config(tmp_path, 1883, homeassistant={"enabled": True},
                                    cameras=cameras("rtsp://127.0.0.1:9/x")))
    assert IMAGE_CONFIG not in discovery_messages(off)
    on = off.model_copy(update={"media": off.media.model_copy(
        update={"latest_snapshot": True})})
    body = json.loads(discovery_messages(on)[IMAGE_CONFIG])
    assert body["image_topic"] == f"{BASE}/snapshots/street"
    assert body["content_type"] == "image/jpeg"
    assert body["unique_id"] == "test-edge_street_snapshot"
    assert body["device"]["identifiers"] == ["edge-agent_test-edge"]
    # Rendered as Home Assistant renders it: available while the agent says online.
    template = jinja2.Environment().from_string(body["availability"][0]["value_template"])
    assert [template.render(value=v) for v in ("online", "offline", "stopped")] == [
        "online", "offline", "offline"]


@pytest.mark.slow
def test_latest_snapshot_is_retained_where_the_image_entity_looks(
        tmp_path: Path, broker: Broker, recorder: Any) -> None:
    video = REPO / "demo" / "street.avi"
    if not video.is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    rec = recorder("homeassistant/#", f"{BASE}/events/#")
    config = base_config(tmp_path, broker.port, media={"latest_snapshot": True},
                         homeassistant={"enabled": True}, cameras=cameras(str(video)))
    agent = AgentProcess(tmp_path, config).start()
    try:
        assert rec.wait_for(lambda ms: any(m.topic == IMAGE_CONFIG for m in ms), 30), agent.log
        assert rec.wait_for(lambda ms: any(e["images"] for e in events_of(ms, "street")), 90)
        published = {m["sha256"] for e in events_of(rec.messages, "street")
                     for m in e["images"] if m["role"] == "annotated"}
        image_topic = json.loads(next(m.payload for m in rec.messages
                                      if m.topic == IMAGE_CONFIG))["image_topic"]
        assert load_config(agent.config_path).media.latest_snapshot
        # A subscriber that comes later (Home Assistant starting) gets the picture at once.
        late = Recorder(broker, [image_topic, f"{image_topic}/+"])
        try:
            assert late.wait_for(lambda ms: {m.topic for m in ms} >= {
                image_topic, f"{image_topic}/person"}, 15), [m.topic for m in late.messages]
            first = {m.topic: m for m in late.messages}
        finally:
            late.close()
    finally:
        assert agent.stop() == 0
    for topic in (image_topic, f"{image_topic}/person"):
        assert first[topic].retain and first[topic].payload[:2] == b"\xff\xd8"
    assert hashlib.sha256(first[image_topic].payload).hexdigest() in published
