"""A retained command is not replayed; Home Assistant entities can be removed from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish

from scripts.harness.agent_process import REPO, AgentProcess, base_config
from scripts.harness.broker import Broker


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
