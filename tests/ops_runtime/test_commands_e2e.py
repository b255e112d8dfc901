"""Stats and commands against a running agent process and a real Mosquitto."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker, Recorder

BASE = "edge-agent/test-edge"
RULE = {"id": "burst", "name": "Burst", "window_seconds": 0.5, "min_events": 3,
        "group_by": "label_id", "include_label_ids": ["person"]}


def stats_of(rec: Recorder) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in rec.on(f"{BASE}/stats")]


def results_of(rec: Recorder) -> list[tuple[str, dict[str, Any]]]:
    return [(m.topic, json.loads(m.payload)) for m in rec.on(f"{BASE}/result")]


def command(rec: Recorder, suffix: str, payload: Any, timeout: float = 15) -> dict[str, Any]:
    """Publish one command and return its result (matched by request id)."""
    rid = f"req-{random.getrandbits(48):x}"
    if isinstance(payload, dict):
        payload = json.dumps({**payload, "request_id": rid}).encode()
    before = len(results_of(rec))
    rec.client.publish(f"{BASE}/set/{suffix}", payload, qos=1)

    def answered(ms: list[Any]) -> bool:
        new = results_of(rec)[before:]
        return any(body.get("request_id") == rid or not isinstance(payload, dict)
                   for _, body in new)

    assert rec.wait_for(answered, timeout), f"no result for set/{suffix}"
    topic, body = next((t, b) for t, b in results_of(rec)[before:]
                       if b.get("request_id") == rid or not isinstance(payload, dict))
    assert topic == f"{BASE}/result/{suffix}"
    return body


def request_stats(rec: Recorder) -> dict[str, Any]:
    """Ask for stats now (set/stats) and return the next stats document."""
    before = len(stats_of(rec))
    assert command(rec, "stats", {})["ok"]
    assert rec.wait_for(lambda ms: len(stats_of(rec)) > before, 10)
    return stats_of(rec)[-1]


def start_agent(tmp_path: Path, broker: Broker, agents: list[AgentProcess],
                **sections: Any) -> AgentProcess:
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port, **sections)).start()
    agents.append(agent)
    assert agent.wait_log("mqtt: connected", 30), agent.log
    return agent


def test_stats_reflect_known_activity(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(f"{BASE}/#")
    agent = start_agent(tmp_path, broker, agents,
                        synthetic=[{"id": "s1", "rate": 100, "count": 40}], rules=[RULE])
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= 40, 30), agent.log

    def settled(ms: list[Any]) -> bool:
        for s in reversed(stats_of(rec)):
            return bool(s["sources"]["s1"]["events_emitted"] == 40
                        and s["outbox"]["depth"] == 0 and s["outbox"]["in_flight"] == 0)
        return False

    assert rec.wait_for(settled, 30), stats_of(rec)[-1:]
    stats = stats_of(rec)[-1]
    assert stats["version"] == __version__ and stats["device_id"] == "test-edge"
    assert stats["uptime_s"] > 0
    assert stats["events_accepted"] == 40
    assert stats["sources"]["s1"]["state"] == "ended"
    assert stats["outbox"]["enqueued"] >= 40 and stats["outbox"]["acked"] >= 40
    assert stats["drops"] == {} or sum(stats["drops"].values()) == 0
    # 40 events in 0.4 s, three to a composite within 0.5 s: at least one formed.
    burst = stats["rules"]["burst"]
    assert burst["formed"] >= 1 and burst["formed"] <= stats["composites_published"]
    system = stats["system"]
    assert system["cpu_percent"] is not None and 0 <= system["cpu_percent"] <= 100 * (
        system["cpu_count"] or 1) + 50
    assert agent.proc is not None
    rss = psutil.Process(agent.proc.pid).memory_info().rss
    assert rss / 2 < system["rss_bytes"] < rss * 2
    assert system["threads"] >= 3 and system["open_fds"] > 3
    assert len(system["load"]) == 3
    assert 0 < system["disk_free_bytes"] <= system["disk_total_bytes"]
    assert system["temperature_c"] is None or -40 <= system["temperature_c"] <= 150
    assert stats["commands"] == {"accepted": 0, "rejected": {}}


def test_each_command_round_trip(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(f"{BASE}/#")
    agent = start_agent(tmp_path, broker, agents, synthetic=[{"id": "s1", "rate": 20}],
                        rules=[RULE], stats={"interval": 3600})
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= 3, 30), agent.log

    body = command(rec, "sources/s1/detection", {"enabled": False})
    assert body["ok"] and body["result"] == {"source": "s1", "enabled": False}
    time.sleep(0.2)  # an event already past the check may still be on its way
    first = request_stats(rec)["sources"]["s1"]
    assert first["enabled"] is False
    time.sleep(1.0)
    assert request_stats(rec)["sources"]["s1"]["events_emitted"] == first["events_emitted"]
    n = len(events_of(rec.messages))
    assert command(rec, "sources/s1/detection", {"enabled": True})["ok"]
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= n + 3, 10)

    assert command(rec, "rules/burst/enabled", {"enabled": False})["result"] == {
        "rule": "burst", "enabled": False}
    assert command(rec, "rules/burst/enabled", {"enabled": True})["ok"]
    assert command(rec, "config/reload", {})["result"] == {"queued": True}
    assert agent.wait_log("reload: applied", 10), agent.log

    refusals = [
        ("rules/nope/enabled", {"enabled": False}, "unknown rule nope"),
        ("sources/nope/detection", {"enabled": False}, "unknown source nope"),
        ("sources/s1/launch", {}, "unknown command set/sources/s1/launch"),
        ("sources/s1/thresholds", {"threshold": 0.5}, "source s1 does not support thresholds"),
        ("sources/s1/thresholds", {"threshold": 2}, "less than or equal to 1"),
        ("sources/s1/snapshot", {}, "source s1 takes no snapshots"),
        ("sources/s1/detection", {"enabled": "no"}, "valid boolean"),
    ]
    for suffix, payload, needle in refusals:
        body = command(rec, suffix, payload)
        assert not body["ok"] and needle in body["error"], (suffix, body)
        assert body["request_id"].startswith("req-")
    body = command(rec, "sources/s1/detection", b"{oops")
    assert not body["ok"] and body["request_id"] is None and "not JSON" in body["error"]
    # One log line per command: 7 carried out, the refusals, the bad JSON.
    assert agent.log.count(" agent.mqtt.commands ") == 7 + len(refusals) + 1, agent.log
    assert "Traceback" not in agent.log


def test_allow_list_refuses_what_it_does_not_name(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(f"{BASE}/#")
    start_agent(tmp_path, broker, agents, synthetic=[{"id": "s1", "rate": 5}],
                commands={"allow": ["stats.publish"]})
    body = command(rec, "sources/s1/detection", {"enabled": False})
    assert not body["ok"]
    assert body["error"] == "command sources.detection is not allowed on this device " \
        "(commands.allow)"
    assert command(rec, "stats", {})["ok"]
    assert rec.wait_for(lambda ms: any(
        s["sources"]["s1"]["enabled"] is True and s.get("commands", {}).get("rejected")
        for s in stats_of(rec)), 10)


def test_commands_disabled_means_no_subscription(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(f"{BASE}/#")
    start_agent(tmp_path, broker, agents, synthetic=[{"id": "s1", "rate": 5}],
                commands={"enabled": False})
    rec.client.publish(f"{BASE}/set/stats", b"{}", qos=1)
    rec.client.publish(f"{BASE}/set/sources/s1/detection", b'{"enabled": false}', qos=1)
    assert rec.wait_for(lambda ms: len(stats_of(rec)) >= 2, 15)
    assert results_of(rec) == []
    assert all(s["sources"]["s1"]["enabled"] for s in stats_of(rec))


def _random_payload(rng: random.Random) -> bytes:
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if choice == 1:
        return b"x" * (64 * 1024 + rng.randrange(1, 1000))
    if choice == 2:
        return json.dumps([rng.random() for _ in range(rng.randrange(5))]).encode()
    if choice == 3:  # near misses of the real payloads; never a valid "enabled"
        return json.dumps({"enabled": rng.choice(["false", 0, None, [], {}, "true", 1.0])}
                          ).encode()
    if choice == 4:
        return json.dumps({"enabled": False, rng.choice(["x", "id", "force"]): 1}).encode()
    if choice == 5:
        return json.dumps({"threshold": rng.choice([-1, 2, "0.5", None, 1e309, True]),
                           "labels": {"person": {"threshold": rng.uniform(1.01, 9)}}}).encode()
    return ("{" + "".join(rng.choice('"{}[]:,ab1é') for _ in range(rng.randrange(30)))).encode()


def _random_suffix(rng: random.Random) -> str:
    known = ["sources/s1/detection", "sources/s1/thresholds", "rules/burst/enabled",
             "sources/s1/snapshot", "sources/zz/detection", "rules/zz/enabled"]
    if rng.random() < 0.6:
        return rng.choice(known)
    alphabet = "abcxyz/._-é한 "
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 20))).strip("/") or "q"


def test_fuzzed_payloads_over_mqtt_leave_the_agent_alive_and_unchanged(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(f"{BASE}/#")
    agent = start_agent(tmp_path, broker, agents, synthetic=[{"id": "s1", "rate": 20}],
                        rules=[RULE])
    rng = random.Random(20240611)
    sent = 300
    for _ in range(sent):
        payload = _random_payload(rng)
        rec.client.publish(f"{BASE}/set/{_random_suffix(rng)}", payload, qos=1)
    assert rec.wait_for(lambda ms: len(results_of(rec)) >= sent, 60), (
        f"{len(results_of(rec))} results of {sent}\n{agent.log[-2000:]}")
    results = results_of(rec)
    assert len(results) == sent, "exactly one result per command"
    assert not any(body["ok"] for _, body in results), [b for _, b in results if b["ok"]][:3]
    assert agent.proc is not None and agent.proc.poll() is None
    # Stats still come, detection is still on, the rule still forms composites.
    n = len(stats_of(rec))
    assert rec.wait_for(lambda ms: len(stats_of(rec)) >= n + 2, 15), agent.log[-2000:]
    last = stats_of(rec)[-1]
    assert last["sources"]["s1"]["enabled"] is True
    assert last["commands"]["accepted"] == 0 and sum(last["commands"]["rejected"].values()) == sent

    def rule_activity(stats: dict[str, Any]) -> int:
        burst = stats["rules"]["burst"]
        return int(burst["formed"] + burst["updated"] + burst["finalized"])

    before = rule_activity(last)
    assert rec.wait_for(lambda ms: rule_activity(stats_of(rec)[-1]) > before, 15)
    assert "Traceback" not in agent.log
