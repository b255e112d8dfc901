"""An agent with secrets in its config never writes or publishes them.

The MQTT password comes from a password file (the broker refuses anonymous clients), the
camera URL carries credentials; everything the agent wrote (log, outbox, rule state) and
everything it published (events, status, source status, stats, command results, discovery)
is searched for both.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker

MQTT_PASSWORD = "Mq77-Secret-Pw"
CAMERA_PASSWORD = "S3cretCam"
BASE = "edge-agent/test-edge"


class AuthRecorder:
    """Records every message on ``#`` as an authenticated client."""

    def __init__(self, broker: Broker, username: str, password: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
            client.subscribe("#", qos=1)
            connected.set()

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append((msg.topic, msg.payload))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(10), "recorder could not connect"

    def on(self, prefix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t.startswith(prefix)]

    def wait(self, predicate: Any, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_secrets_appear_nowhere(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate((("edge", MQTT_PASSWORD), ("watcher", "watch-pw"))):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd),
                        user, password], check=True, capture_output=True)
    passwd.chmod(0o644)
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b",
                    extra_conf=f"allow_anonymous false\npassword_file {passwd}\n")
    broker.start()
    rec = AuthRecorder(broker, "watcher", "watch-pw")
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(MQTT_PASSWORD + "\n")
    work = tmp_path / "agent"
    work.mkdir()
    url = f"rtsp://admin:{CAMERA_PASSWORD}@127.0.0.1:9/stream"
    config = base_config(
        work, broker.port,
        mqtt={"username": "edge", "password_file": str(secret_file)},
        cameras=[{"id": "cam", "url": url, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}],
        synthetic=[{"id": "s1", "rate": 50, "count": 10}],
        homeassistant={"enabled": True},
    )
    agent = AgentProcess(work, config).start()
    try:
        def cam_stats() -> list[dict[str, Any]]:
            docs = [json.loads(p) for p in rec.on(f"{BASE}/stats")]
            return [d["sources"]["cam"] for d in docs if "cam" in d["sources"]]

        assert rec.wait(lambda: len(rec.on(f"{BASE}/events/s1")) >= 10), agent.log
        assert rec.wait(lambda: any(s["reconnects"] >= 1 for s in cam_stats())), agent.log
        assert rec.wait(lambda: any(b"reconnecting" in p or b"error" in p
                                    for p in rec.on(f"{BASE}/sources/cam/status"))), agent.log
        for suffix, payload in (("stats", b'{"request_id": "s"}'),
                                ("sources/cam/snapshot", b'{"request_id": "snap"}'),
                                ("sources/cam/detection", b'{"enabled": false}')):
            rec.client.publish(f"{BASE}/set/{suffix}", payload, qos=1)
        assert rec.wait(lambda: len(rec.on(f"{BASE}/result/")) >= 3), agent.log
        assert agent.stop() == 0
    finally:
        agent.close()
        rec.close()
        broker.stop()

    assert "***" in cam_stats()[-1]["url"], "the camera URL is shown redacted"
    written: dict[str, bytes] = {"log": agent.log_path.read_bytes()}
    for directory in (work / "outbox", work / "rules-state"):
        for path in directory.rglob("*") if directory.exists() else []:
            if path.is_file():
                written[str(path)] = path.read_bytes()
    assert any("outbox" in name for name in written), "the outbox left no files to search"
    with rec.lock:
        published = list(rec.messages)
    topics = {t.split("/")[2] if t.startswith(BASE) else t.split("/")[0] for t, _ in published}
    assert {"events", "status", "sources", "stats", "result", "homeassistant"} <= topics, topics
    for secret in (MQTT_PASSWORD, CAMERA_PASSWORD):
        needle = secret.encode()
        assert not [name for name, data in written.items() if needle in data], secret
        leaks = [t for t, p in published if needle in p or needle in t.encode()]
        assert not leaks, (secret, leaks)
