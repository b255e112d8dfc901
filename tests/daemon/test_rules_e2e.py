"""Composite events from the running agent: formed on the device, delivered like events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker


def composites(rec: Any) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in rec.on("edge-agent/test-edge/composite/")]


def test_rule_forms_a_composite_event_and_finalises_it(
    tmp_path: Path, broker: Broker, recorder: Any
) -> None:
    rec = recorder("edge-agent/test-edge/#")
    config = base_config(
        tmp_path, broker.port,
        synthetic=[{"id": "mic-sim", "kind": "microphone", "labels": ["glass"], "rate": 20,
                    "count": 5}],
        rules=[{"id": "glass-burst", "name": "Glass burst", "window_seconds": 1.5,
                "min_events": 3, "group_by": "label_id", "include_label_ids": ["glass"]}],
    )
    agent = AgentProcess(tmp_path, config).start()
    try:
        assert rec.wait_for(lambda ms: any(c["status"] == "final" for c in composites(rec)), 30), (
            agent.log)
        final = [c for c in composites(rec) if c["status"] == "final"][-1]
        assert final["group_key"] == "test-edge:glass"
        assert final["rule"]["id"] == "glass-burst" and final["rule"]["min_events"] == 3
        assert len(final["events"]) == 5
        assert [m["id"] for m in final["mics"]] == ["mic-sim"]
        assert final["labels"][0]["id"] == "glass" and final["labels"][0]["name"]["ko"]
        assert final["ended_at"] is not None
        # Every update of one composite shares its id.
        assert len({c["id"] for c in composites(rec)}) == 1
        stats = [json.loads(m.payload) for m in rec.on("edge-agent/test-edge/stats")]
        assert rec.wait_for(lambda ms: any(
            json.loads(m.payload).get("composites_published", 0) >= 2
            for m in rec.on("edge-agent/test-edge/stats")), 10), stats[-1:]
    finally:
        assert agent.stop() == 0
