"""A retained command is not replayed; Home Assistant entities can be removed from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish

from scripts.harness.agent_process import REPO, AgentProcess, base_config
from scripts.harness.broker import Broker, Recorder


def test_a_retained_command_is_ignored(tmp_path: Path, broker: Broker, recorder: Any) -> None:
    publish.single("edge-agent/test-edge/set/config/reload", json.dumps({"request_id": "old"}),
                   qos=1, retain=True, hostname=broker.host, port=broker.port)
    rec = recorder("edge-agent/test-edge/#")
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port)).start()
    try:
        assert agent.wait_log("ignoring retained message on edge-agent/test-edge/set/config/"
                              "reload", 20), agent.log
        assert not rec.on("edge-agent/test-edge/result/"), "a retained command was executed"
        assert "reload: applied" not in agent.log
    finally:
        assert agent.stop() == 0


def test_homeassistant_remove_clears_the_announced_entities(
    tmp_path: Path, broker: Broker, recorder: Any
) -> None:
    config = base_config(tmp_path, broker.port, homeassistant={"enabled": True},
                         synthetic=[{"id": "s1", "rate": 1}])
    rec = recorder("homeassistant/#")
    agent = AgentProcess(tmp_path, config).start()
    try:
        assert rec.wait_for(lambda ms: any(m.payload for m in ms), 20), agent.log
    finally:
        assert agent.stop() == 0
    announced = {m.topic for m in rec.messages if m.payload}
    out = subprocess.run([sys.executable, "-m", "agent", "homeassistant", "remove", "-c",
                          str(agent.config_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert rec.wait_for(lambda ms: {m.topic for m in ms if not m.payload} >= announced, 10)
    assert set(out.stdout.split()) >= {f for f in announced}


def test_state_set_while_offline_is_sent_once_when_the_broker_comes(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """Statuses and discovery set before the first connection go out once, not twice."""
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", persistent=True)  # keeps the recorder's session
    broker.start()
    rec = Recorder(broker, ["edge-agent/test-edge/#", "homeassistant/#"],
                   client_id="retained-once", resubscribe=False)
    broker.stop()
    config = base_config(tmp_path, broker.port, homeassistant={"enabled": True},
                         synthetic=[{"id": "s1", "rate": 1}])
    agent = AgentProcess(tmp_path, config).start()
    agents.append(agent)
    try:
        assert agent.wait_log("synthetic s1: running", 20), agent.log
        broker.start()
        assert rec.wait_for(lambda ms: any(m.topic.endswith("/stats") for m in ms), 20), (
            agent.log)
        time.sleep(1)  # anything sent twice would be here by now
    finally:
        rec.close()
        broker.stop()
    assert agent.stop() == 0
    # The recorder's session outlived the broker's restart and is not subscribed again,
    # so each message here is one the agent published.
    counts = Counter((m.topic, m.payload) for m in rec.messages
                     if not m.topic.endswith(("/stats", "/events/s1")))
    topics = {topic for topic, _payload in counts}
    assert {"edge-agent/test-edge/status", "edge-agent/test-edge/outbox/status",
            "edge-agent/test-edge/sources/s1/status"} <= topics, topics
    assert any(t.startswith("homeassistant/") for t in topics), topics
    twice = {topic: n for (topic, _payload), n in counts.items() if n > 1}
    assert not twice, twice
