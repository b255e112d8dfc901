"""Home Assistant MQTT discovery: what is announced, re-announced, and removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load_config
from agent.mqtt.discovery import discovery_messages, remove_discovery
from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker, Recorder

SOURCES = {
    "synthetic": [{"id": "s1", "labels": ["person", "dog"]},
                  {"id": "off", "enabled": False}],
    "cameras": [{"id": "front.door", "url": "rtsp://127.0.0.1:9/x",
                 "objects": {"track": ["person", "car"]}}],
}
RULES = [{"id": "burst", "window_seconds": 1, "min_events": 2}]


def config_with(tmp_path: Path, **ha: Any) -> AgentConfig:
    return AgentConfig(**base_config(tmp_path, 1883, homeassistant={"enabled": True, **ha},
                                     **SOURCES), rules=RULES)


def test_entities_for_sources_rules_and_stats(tmp_path: Path) -> None:
    messages = {t: json.loads(p) for t, p in discovery_messages(config_with(tmp_path)).items()}
    node = "homeassistant/{}/test-edge/{}/config"
    state = messages[node.format("sensor", "s1_state")]
    assert state["state_topic"] == "edge-agent/test-edge/sources/s1/status"
    assert state["value_template"] == "{{ value_json.state }}"
    assert "reconnecting" in state["options"] and state["device_class"] == "enum"
    events = messages[node.format("event", "front_door_events")]
    assert events["state_topic"] == "edge-agent/test-edge/events/front.door"
    assert events["event_types"] == ["person_new", "person_update", "person_end", "car_new",
                                     "car_update", "car_end", "snapshot"]
    assert messages[node.format("event", "s1_events")]["event_types"] == ["person", "dog"]
    rule = messages[node.format("event", "rule_burst")]
    assert rule["state_topic"] == "edge-agent/test-edge/composite/burst"
    assert rule["event_types"] == ["open", "final"]
    assert node.format("sensor", "off_state") not in messages, "disabled sources are left out"
    assert node.format("sensor", "agent_temperature") in messages
    for body in messages.values():
        (availability,) = body["availability"]
        assert availability["topic"] == "edge-agent/test-edge/status"
        assert "stopped" not in availability["payload_available"]
        assert body["device"]["identifiers"] == ["edge-agent_test-edge"]
    assert len({b["unique_id"] for b in messages.values()}) == len(messages)


def test_node_id_and_prefix_are_configurable(tmp_path: Path) -> None:
    topics = discovery_messages(config_with(tmp_path, node_id="barn", discovery_prefix="ha"))
    assert all(t.startswith("ha/") and t.split("/")[2] == "barn" for t in topics)


def test_templates_render_as_home_assistant_would(tmp_path: Path) -> None:
    """HA renders these with Jinja; values are mapped the way HA then reads them."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment()
    messages = {t.split("/")[3]: json.loads(p)
                for t, p in discovery_messages(config_with(tmp_path)).items()}

    def render(template: str, payload: str) -> str:
        try:
            value_json = json.loads(payload)
        except ValueError:
            value_json = None
        return env.from_string(template).render(value=payload, value_json=value_json)

    availability = messages["s1_state"]["availability"][0]["value_template"]
    assert [render(availability, v) for v in ("online", "offline", "stopped")] == [
        "online", "offline", "offline"]
    template = messages["front_door_events"]["value_template"]
    event = {"id": "e1", "kind": "object", "phase": "new", "track_id": "t1",
             "label": {"id": "person"}}
    assert json.loads(render(template, json.dumps(event)))["event_type"] == "person_new"
    snapshot = {"id": "e2", "kind": "snapshot", "label": None}
    assert json.loads(render(template, json.dumps(snapshot)))["event_type"] == "snapshot"


def configs(rec: Recorder) -> list[Any]:
    return [m for m in rec.on("homeassistant/") if m.topic.endswith("/config")]


def test_announce_reannounce_on_ha_online_and_remove(
    tmp_path: Path, broker: Broker, recorder: Any
) -> None:
    rec = recorder("homeassistant/#")
    config = base_config(tmp_path, broker.port, synthetic=[{"id": "s1", "rate": 5}],
                         rules=RULES, homeassistant={"enabled": True})
    agent = AgentProcess(tmp_path, config).start()
    try:
        expected = len(discovery_messages(load_config(agent.config_path)))
        assert rec.wait_for(lambda ms: len(configs(rec)) >= expected, 30), agent.log
        first = configs(rec)
        assert len({m.topic for m in first}) == expected
        rec.client.publish("homeassistant/status", b"online", qos=1)
        assert rec.wait_for(lambda ms: len(configs(rec)) >= 2 * expected, 15), agent.log
        rec.client.publish("homeassistant/status", b"offline", qos=1)
        assert agent.stop() == 0
    finally:
        agent.close()
    # An entity of a source removed earlier: cleared too, since it is under this node.
    stale = "homeassistant/sensor/test-edge/gone_state/config"
    rec.client.publish(stale, b'{"name": "gone"}', qos=1, retain=True).wait_for_publish(5)
    later = Recorder(broker, ["homeassistant/#"])
    try:
        assert later.wait_for(lambda ms: len(ms) >= expected + 1, 10)
        assert all(m.retain for m in later.messages)
    finally:
        later.close()
    cleared = remove_discovery(load_config(agent.config_path), settle=0.5)
    assert stale in cleared and len(cleared) == expected + 1
    after = Recorder(broker, ["homeassistant/#"])
    try:
        assert not after.wait_for(lambda ms: len(ms) > 0, 1.0), after.messages
    finally:
        after.close()
