"""Faults a site brings, seen from outside the agent: TLS mismatch, a camera going away,
and what an operator sees with `edge-agent tail`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scripts.harness.agent_process import REPO, AgentProcess, base_config, events_of
from scripts.harness.broker import Broker
from scripts.harness.mjpeg import MjpegServer


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls(tmp: Path, server_san: str) -> dict[str, Path]:
    """A CA and a server certificate for ``server_san`` (e.g. 'IP:127.0.0.1')."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=tmp)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=broker",
             "-keyout", "server.key", "-out", "server.csr", cwd=tmp)
    (tmp / "ext.cnf").write_text(f"subjectAltName={server_san}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem", cwd=tmp)
    return {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key"}


def tls_broker(tmp: Path, san: str) -> Broker:
    certs = make_tls(tmp, san)
    broker_dir = tmp / "broker"
    broker_dir.mkdir()
    broker = Broker(broker_dir, extra_conf=(
        f"cafile {certs['ca']}\ncertfile {certs['cert']}\nkeyfile {certs['key']}\n"))
    broker.start()
    return broker


@pytest.mark.parametrize(("san", "connects"), [("IP:127.0.0.1", True),
                                               ("DNS:elsewhere.example", False)])
def test_tls_hostname_is_checked(tmp_path: Path, san: str, connects: bool) -> None:
    broker = tls_broker(tmp_path, san)
    try:
        agent = AgentProcess(tmp_path, base_config(
            tmp_path, broker.port, mqtt={"tls": {"enabled": True, "ca_file": str(tmp_path /
                                                                                  "ca.pem")}},
            synthetic=[{"id": "s1", "rate": 5, "count": 3}])).start()
        try:
            if connects:
                assert agent.wait_log("mqtt: connected", 20), agent.log
            else:
                assert agent.wait_log("TLS certificate check failed", 20), agent.log
                line = next(x for x in agent.log.splitlines() if "TLS certificate" in x)
                assert "mismatch" in line and "127.0.0.1" in line and "retrying in" in line
                assert "mqtt: connected" not in agent.log
        finally:
            assert agent.stop() == 0
    finally:
        broker.stop()


def test_camera_outage_shows_on_its_status_topic_while_others_keep_working(
    tmp_path: Path, broker: Broker, recorder: Any
) -> None:
    frames = [np.full((120, 160, 3), 40 * i, np.uint8) for i in range(5)]
    camera = MjpegServer(frames, fps=10)
    camera.start()
    rec = recorder("edge-agent/test-edge/#")
    config = base_config(tmp_path, broker.port,
                         cameras=[{"id": "yard", "url": camera.url(credentials="admin:S3cret"),
                                   "fps": 2, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}],
                         synthetic=[{"id": "s1", "rate": 10}])
    agent = AgentProcess(tmp_path, config).start()

    def states(ms: list[Any]) -> list[str]:
        return [json.loads(m.payload)["state"]
                for m in rec.on("edge-agent/test-edge/sources/yard/status")]

    try:
        assert rec.wait_for(lambda ms: "running" in states(ms), 30), agent.log
        camera.stop()
        assert rec.wait_for(lambda ms: states(ms)[-1:] == ["reconnecting"], 30), states([])
        before = len(events_of(rec.messages, "s1"))
        assert rec.wait_for(lambda ms: len(events_of(ms, "s1")) >= before + 10, 20), (
            "the synthetic source must keep going while the camera is down")
        camera.start()
        assert rec.wait_for(lambda ms: states(ms)[-1:] == ["running"], 30), states([])
        last = json.loads(rec.on("edge-agent/test-edge/sources/yard/status")[-1].payload)
        assert last["reconnects"] >= 1
        everything = agent.log + "".join(m.payload.decode(errors="replace")
                                         for m in rec.messages)
        assert "S3cret" not in everything, "camera credentials leaked"
    finally:
        assert agent.stop() == 0
        camera.stop()


def test_tail_prints_readable_lines(tmp_path: Path, broker: Broker) -> None:
    config = base_config(tmp_path, broker.port,
                         synthetic=[{"id": "s1", "rate": 20, "labels": ["person"]}])
    agent = AgentProcess(tmp_path, config).start()
    try:
        assert agent.wait_log("mqtt: connected", 20)
        out = subprocess.run(
            [sys.executable, "-m", "agent", "tail", "-c", str(agent.config_path), "-n", "8",
             "--timeout", "20"], cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        agent.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith(f"watching edge-agent/test-edge/# on 127.0.0.1:{broker.port}")
    assert any("status online (retained)" in line for line in lines), lines
    event_lines = [line for line in lines if " event  s1 " in line]
    assert event_lines and "person (사람)" in event_lines[0] and "seq " in event_lines[0]


def test_media_on_their_own_topic(tmp_path: Path, broker: Broker, recorder: Any) -> None:
    sound = REPO / "demo" / "sounds.wav"
    if not sound.is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    rec = recorder("edge-agent/test-edge/#")
    config = base_config(tmp_path, broker.port, mqtt={"media_transport": "topic"},
                         microphones=[{"id": "mic", "file": str(sound), "realtime": False,
                                       "listen": ["siren"]}])
    agent = AgentProcess(tmp_path, config).start()
    try:
        def with_clip(ms: list[Any]) -> list[dict[str, Any]]:
            return [e for e in events_of(ms, "mic") if e.get("audio")]

        assert rec.wait_for(lambda ms: bool(with_clip(ms)), 60), agent.log
    finally:
        assert agent.stop() == 0
    event = with_clip(rec.messages)[0]
    clip = event["audio"]
    assert clip["data"] is None and clip["topic"] == f"media/mic/{event['id']}/clip"
    topics = [m.topic for m in rec.messages]
    media_topic = f"edge-agent/test-edge/{clip['topic']}"
    assert media_topic in topics
    # The bytes arrive first, so a consumer that sees the event can fetch them.
    event_at = next(i for i, m in enumerate(rec.messages)
                    if m.topic.endswith("/events/mic") and clip["topic"].encode() in m.payload)
    assert topics.index(media_topic) < event_at
    blob = next(m.payload for m in rec.messages if m.topic == media_topic)
    assert blob[:4] == b"RIFF" and len(blob) == clip["bytes"]
    assert hashlib.sha256(blob).hexdigest() == clip["sha256"]
