"""A corrupt outbox.db does not keep the real agent down: it starts, saves what it can,
counts the rest, and delivers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker, Recorder
from tests.outbox.test_corrupt import damage

TOPIC = "edge-agent/test-edge/#"
COUNT = 400


def last_stats(rec: Recorder) -> dict[str, Any] | None:
    for m in reversed(rec.on("edge-agent/test-edge/stats")):
        return dict(json.loads(m.payload))
    return None


@pytest.mark.parametrize("how", ["random_bytes_in_the_middle", "truncated", "text"])
def test_agent_starts_on_a_corrupt_outbox_and_delivers_what_it_saved(
    tmp_path: Path, how: str, agents: list[AgentProcess]
) -> None:
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b")
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    outbox = tmp_path / "outbox"
    sources = [{"id": "s1", "rate": 400, "count": COUNT, "payload_bytes": 1000}]
    first = AgentProcess(tmp_path / "first", base_config(
        tmp_path, broker.port, synthetic=sources, outbox={"path": str(outbox)})).start()
    agents.append(first)
    assert first.wait_log("synthetic s1: ended", 60), first.log
    assert first.stop() == 0  # broker down: all 400 wait in outbox.db
    damage(outbox / "outbox.db", how)

    broker.start()
    rec = Recorder(broker, [TOPIC])
    try:
        second = AgentProcess(tmp_path / "second", base_config(
            tmp_path, broker.port, outbox={"path": str(outbox)},
            synthetic=[{"id": "s2", "rate": 50, "count": 5}])).start()
        agents.append(second)
        assert second.wait_log("mqtt: connected", 30), second.log
        started = time.time()
        assert rec.wait_for(lambda ms: len(events_of(ms, "s2")) == 5, 30), second.log

        def drained(ms: list[Any]) -> bool:
            stats = last_stats(rec)
            return bool(stats and stats["timestamp"] > started + 1
                        and stats["outbox"]["depth"] == 0 and stats["outbox"]["in_flight"] == 0)

        assert rec.wait_for(drained, 30), second.log
        stats = last_stats(rec)
        assert stats is not None
        assert second.proc is not None and second.proc.poll() is None, "the agent must stay up"
    finally:
        rec.close()
        broker.stop()
    assert second.stop() == 0
    saved = sorted(e["seq"] for e in events_of(rec.messages, "s1"))
    corrupt = stats["drops"]["corrupt"]
    assert saved == sorted(set(saved))
    lines = [line for line in second.log.splitlines() if "corrupt (" in line]
    assert len(lines) == 1 and str(outbox / "outbox.db") in lines[0], second.log
    if how == "text":
        assert saved == [] and "unknown" in lines[0]
    else:
        assert saved and corrupt > 0 and len(saved) + corrupt == COUNT, (len(saved), corrupt)
    assert list(outbox.glob("outbox.db.corrupt-*")), "the damaged file is kept"
    print(f"\n{how}: stored {COUNT}, delivered {len(saved)}, counted corrupt {corrupt}")
