"""``mqtt.media_transport: request`` with the real agent, a real broker and the real CLI.

Events carry each image's metadata and no bytes; ``set/media/get`` (MQTT 5 response topic
and correlation data, or the ``result/`` convention) and ``edge-agent media get`` return the
exact bytes; expired or unknown media get an error answer; the store stays within
``media.max_bytes`` under a burst of snapshots and across ``kill -9``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from scripts.harness.agent_process import REPO, AgentProcess, base_config, events_of
from scripts.harness.broker import Broker

BASE = "edge-agent/test-edge"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def street() -> Path:
    video = REPO / "demo" / "street.avi"
    if not video.is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    return video


def camera(video: Path, **extra: Any) -> dict[str, Any]:
    return {"id": "street", "url": str(video), "fps": 5, "loop": True,
            "objects": {"track": ["person"]}, **extra}


def media_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [*event["images"], *([event["audio"]] if event.get("audio") else [])]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "media", "get", "-c", str(config),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60)


class Asker:
    """An MQTT 5 client that sends commands with a response topic and correlation data."""

    def __init__(self, broker: Broker) -> None:
        self.reply_topic = f"{BASE}/result/test-{uuid.uuid4().hex[:6]}"
        self.messages: list[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def ask(self, body: dict[str, Any], timeout: float = 30, command: str = "media/get"
            ) -> tuple[dict[str, Any], list[mqtt.MQTTMessage]]:
        """Send ``set/{command}``; the JSON answer and the byte messages before it."""
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        self.client.publish(f"{BASE}/set/{command}", json.dumps(body), qos=1, properties=props)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                mine = [m for m in self.messages if m.properties.CorrelationData == correlation]
                done = [m for m in mine if m.properties.ContentType == "application/json"]
                if done:
                    return json.loads(done[0].payload), mine[:mine.index(done[0])]
                left = deadline - time.monotonic()
                assert left > 0, "no answer"
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_request_events_carry_no_bytes_and_media_get_returns_the_exact_bytes(
        tmp_path: Path, broker: Broker, recorder: Any, street: Path,
        agents: list[AgentProcess]) -> None:
    rec = recorder(f"{BASE}/#")
    config = base_config(tmp_path, broker.port, mqtt={"media_transport": "request"},
                         cameras=[camera(street)])
    agent = AgentProcess(tmp_path, config)
    agents.append(agent)
    agent.start()

    def with_images(ms: list[Any]) -> list[dict[str, Any]]:
        return [e for e in events_of(ms, "street") if e["images"]]

    assert rec.wait_for(lambda ms: len(with_images(ms)) >= 2, 90), agent.log
    # No bytes anywhere: not in the events, not on a media topic.
    assert not rec.on(f"{BASE}/media/")
    for event in events_of(rec.messages):
        for item in media_of(event):
            assert item["data"] is None and item["topic"] is None, item
            assert item["bytes"] > 0 and len(item["sha256"]) == 64
    event = with_images(rec.messages)[0]
    roles = [m["role"] for m in event["images"]]
    by_role = {m["role"]: m for m in event["images"]}
    assert {"input", "annotated"} <= set(roles)
    assert by_role["input"]["width"] and by_role["input"]["height"]

    # MQTT 5: answered on the response topic, correlation data echoed, bytes first.
    asker = Asker(broker)
    try:
        answer, blobs = asker.ask({"event_id": event["id"]})
        assert answer["ok"] is True and answer["command"] == "media.get", answer
        assert [m["role"] for m in answer["result"]["media"]] == roles
        assert len(blobs) == len(roles)
        for blob in blobs:
            user = dict(blob.properties.UserProperty)
            assert blob.properties.ContentType == "image/jpeg"
            assert hashlib.sha256(blob.payload).hexdigest() == by_role[user["role"]]["sha256"]
            assert user["event_id"] == event["id"] and user["sha256"] == by_role[
                user["role"]]["sha256"]
        unknown, nothing = asker.ask({"event_id": "no-such-event"})
        assert unknown["ok"] is False and not nothing
        assert "no media for event no-such-event" in unknown["error"]
        bad_role, _ = asker.ask({"event_id": event["id"], "role": "crop"})
        assert bad_role["ok"] is False and "has no media with role crop" in bad_role["error"]
    finally:
        asker.close()

    # The CLI, under MQTT 5 and under 3.1.1 (the result/ convention).
    out = tmp_path / "fetched"
    done = cli(agent.config_path, event["id"], "-o", str(out))
    assert done.returncode == 0, done.stderr
    for role in roles:
        data = (out / f"{event['id']}-{role}.jpg").read_bytes()
        assert hashlib.sha256(data).hexdigest() == by_role[role]["sha256"]
    v311 = tmp_path / "v311.yaml"
    v311.write_text(yaml.safe_dump({**config, "mqtt": {**config["mqtt"],
                                                      "protocol": "3.1.1"}}))
    out311 = tmp_path / "fetched311"
    done = cli(v311, event["id"], "--role", "annotated", "-o", str(out311))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out311.iterdir()] == [f"{event['id']}-annotated.jpg"]
    assert hashlib.sha256((out311 / f"{event['id']}-annotated.jpg").read_bytes()
                          ).hexdigest() == by_role["annotated"]["sha256"]
    assert any(m.topic == f"{BASE}/result/media/get/{event['id']}/annotated"
               for m in rec.messages)
    missing = cli(v311, "no-such-event", "-o", str(out311))
    assert missing.returncode == 66 and "no media for event no-such-event" in missing.stderr
    assert agent.stop() == 0


def test_expired_media_get_an_error_answer(tmp_path: Path, broker: Broker, recorder: Any,
                                           street: Path, agents: list[AgentProcess]) -> None:
    rec = recorder(f"{BASE}/events/#")
    config = base_config(tmp_path, broker.port, mqtt={"media_transport": "request"},
                         media={"retention": 2}, cameras=[camera(street)])
    agent = AgentProcess(tmp_path, config)
    agents.append(agent)
    agent.start()
    assert rec.wait_for(lambda ms: any(e["images"] for e in events_of(ms)), 90), agent.log
    event = next(e for e in events_of(rec.messages) if e["images"])
    time.sleep(3)
    done = cli(agent.config_path, event["id"], "-o", str(tmp_path / "out"))
    assert done.returncode == 66, done.stderr
    assert "media.retention (2 s)" in done.stderr
    assert agent.stop() == 0


def store_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_store_stays_within_max_bytes_under_a_burst_and_after_kill9(
        tmp_path: Path, broker: Broker, recorder: Any, street: Path,
        agents: list[AgentProcess]) -> None:
    limit = 1024 * 1024
    rec = recorder(f"{BASE}/#")
    config = base_config(tmp_path, broker.port, mqtt={"media_transport": "request"},
                         media={"max_bytes": limit},
                         cameras=[camera(street, snapshots={"quality": 100,
                                                            "max_width": None})])
    agent = AgentProcess(tmp_path, config)
    agents.append(agent)
    agent.start()
    assert agent.wait_log("running", 60), agent.log
    asker = Asker(broker)
    store = tmp_path / "media"
    snapshots: list[str] = []
    peak = 0
    try:
        # A burst of full-size snapshots: several times the store's bound.
        while len(snapshots) < 40:
            answer, _ = asker.ask({}, command="sources/street/snapshot")
            if answer["ok"]:
                snapshots.append(answer["result"]["event_id"])
            else:
                assert "no frame yet" in answer["error"], answer
                time.sleep(0.2)
            peak = max(peak, store_bytes(store))
        sizes = [m["bytes"] for e in events_of(rec.messages) for m in e["images"]]
        assert sum(sizes) > 2 * limit, sizes  # the burst really was larger than the bound
        assert peak <= limit, peak
        # The newest snapshot is served, the first one was evicted (oldest first).
        newest, _ = asker.ask({"event_id": snapshots[-1]})
        assert newest["ok"], newest
        oldest, _ = asker.ask({"event_id": snapshots[0]})
        assert not oldest["ok"] and "max_bytes" in oldest["error"]
        agent.kill9()
        assert store_bytes(store) <= limit
        seen = len(rec.on(f"{BASE}/status"))
        agent.start()
        # Online again (and so subscribed to set/#) after the last will's offline.
        assert rec.wait_for(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/status"
                                        ][seen:][-1:] == [b"online"], 60), agent.log
        assert store_bytes(store) <= limit
        # What was stored before the kill is still served after the restart.
        again, blobs = asker.ask({"event_id": snapshots[-1]})
        assert again["ok"] and len(blobs) == 1, again
    finally:
        asker.close()
    stats = [json.loads(m.payload) for m in rec.messages if m.topic == f"{BASE}/stats"]
    media_stats = [s["media"] for s in stats if "media" in s]
    assert any(s["evicted"] > 0 for s in media_stats), media_stats
    assert all(s["bytes"] <= limit for s in media_stats), media_stats
    assert agent.stop() == 0
    assert store_bytes(store) <= limit


def test_images_shed_from_a_full_outbox_can_still_be_fetched(
        tmp_path: Path, broker: Broker, recorder: Any, street: Path,
        agents: list[AgentProcess]) -> None:
    broker.stop()  # a backlog builds up while the broker is away
    config = base_config(tmp_path, broker.port, media={"enabled": True},
                         outbox={"max_bytes": 256 * 1024, "on_full": "shed_images"},
                         cameras=[camera(street, realtime=False)])
    agent = AgentProcess(tmp_path, config)
    agents.append(agent)
    agent.start()
    assert agent.wait_log("stripping images and clips", 120), agent.log
    broker.start()
    rec = recorder(f"{BASE}/events/#")

    def shed(ms: list[Any]) -> list[dict[str, Any]]:
        return [e for e in events_of(ms) if e["images"]
                and all(m["data"] is None for m in e["images"])]

    assert rec.wait_for(lambda ms: bool(shed(ms)), 60), agent.log
    event = shed(rec.messages)[0]
    asker = Asker(broker)
    try:
        answer, blobs = asker.ask({"event_id": event["id"]})
    finally:
        asker.close()
    assert answer["ok"], answer
    want = {m["role"]: m["sha256"] for m in event["images"]}
    got = {dict(b.properties.UserProperty)["role"]: hashlib.sha256(b.payload).hexdigest()
           for b in blobs}
    assert got == want
    assert agent.stop() == 0
