"""The real agent with its outbox on a real, small file system that another file fills up.

Per ``on_full`` policy, three agent processes on a 4 MiB tmpfs that a filler file has left
with about 0.9 MB: the first with the broker down (the outbox fills to what the disk
allows), the second with the broker back and the space not freed (the backlog drains, new
events are stored and delivered, acknowledged ones are removed), the third started on the
same full disk, which then gets its space back. Every event is delivered or counted,
a restart sends again at most what was in flight, and the log says it in a few lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker, Received, Recorder
from tests.small_fs import fill, small_fs

TOPIC = "edge-agent/test-edge/#"
MAX_INFLIGHT = 20
RUNS = (1500, 600, 600)  # events produced by each agent process


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with small_fs(tmp_path / "fs", 4 * 1024 * 1024) as where:
        yield where


def last_stats(rec: Recorder) -> dict[str, Any] | None:
    for m in reversed(rec.on("edge-agent/test-edge/stats")):
        return dict(json.loads(m.payload))
    return None


def stats_of(messages: list[Received]) -> list[dict[str, Any]]:
    """Every stats message among ``messages``, oldest first."""
    return [dict(json.loads(m.payload)) for m in messages
            if m.topic == "edge-agent/test-edge/stats"]


def drained_since(rec: Recorder, since: float) -> bool:
    """A stats message published after ``since`` (epoch seconds) says the outbox is empty."""
    stats = last_stats(rec)
    return bool(stats and stats["timestamp"] > since
                and stats["outbox"]["depth"] == 0 and stats["outbox"]["in_flight"] == 0)


def noisy_lines(log: str) -> list[str]:
    """Log lines about storing or dropping events (WARNING and above)."""
    return [line for line in log.splitlines()
            if re.search(r"\b(WARNING|ERROR)\b", line)
            and ("outbox" in line or "not stored" in line)]


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new", "shed_images"])
def test_full_disk_broker_down_then_up_space_not_freed_then_freed(
    tmp_path: Path, fs: Path, policy: str, agents: list[AgentProcess]
) -> None:
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", persistent=True)
    broker.start()
    rec = Recorder(broker, [TOPIC], client_id=f"disk-full-{policy}")
    broker.stop()
    filler = fs / "filler"
    fill(filler, leave=900 * 1024)

    def agent(name: str, count: int, rate: float) -> AgentProcess:
        workdir = tmp_path / name  # a log file of its own
        workdir.mkdir()
        process = AgentProcess(workdir, config(count, rate)).start()
        agents.append(process)
        return process

    def config(count: int, rate: float) -> dict[str, Any]:
        return base_config(
            tmp_path, broker.port,
            outbox={"path": str(fs / "outbox"), "max_bytes": 1024 * 1024,
                    "min_free_bytes": 256 * 1024, "on_full": policy},
            mqtt={"max_inflight": MAX_INFLIGHT},
            synthetic=[{"id": "s1", "rate": rate, "count": count, "payload_bytes": 1000}])

    try:
        # 1. Broker down: 1,500 events of ~1.5 KB into ~0.5 MB of room.
        first = agent("first", RUNS[0], 300)
        assert first.wait_log("synthetic s1: ended", 60), first.log
        assert first.stop() == 0, first.log
        # 2. Broker back, space not freed: the backlog and 600 new events go out.
        broker.start()
        second = agent("second", RUNS[1], 200)
        assert second.wait_log("synthetic s1: ended", 60), second.log
        ended = time.time()
        assert rec.wait_for(lambda ms: drained_since(rec, ended), 60), second.log
        assert second.stop() == 0, second.log
        delivered_before_restart = len(events_of(rec.messages))
        # 3. Started on a disk filled further (below min_free_bytes whatever the outbox
        # gave back at its last checkpoint); the space comes back while it runs.
        fill(filler, leave=128 * 1024)
        third_started = time.time()
        third = agent("third", RUNS[2], 100)
        runs = {e["run_id"] for e in events_of(rec.messages)}
        assert rec.wait_for(lambda ms: len({e["run_id"] for e in events_of(ms)} - runs) > 0
                            and len(events_of(ms)) > delivered_before_restart + 100, 60), (
            third.log)
        # Only the third process's own stats count: the last one on record may still be
        # the second's (published once a second, so it can arrive after this wait ends).
        disk_full_while_short = rec.wait_for(
            lambda ms: any(s["timestamp"] > third_started and s["outbox"]["disk_full"]
                           for s in stats_of(ms)), 10)
        filler.unlink()
        assert third.wait_log("synthetic s1: ended", 60), third.log
        ended = time.time()
        assert rec.wait_for(lambda ms: drained_since(rec, ended), 60), third.log
        stats = last_stats(rec)
        assert stats is not None and not stats["outbox"]["disk_full"], "space was freed"
        assert third.stop() == 0, third.log
    finally:
        rec.close()
        broker.stop()

    events = events_of(rec.messages, "s1")
    distinct = {(e["run_id"], e["seq"]) for e in events}
    drops = stats["drops"]
    counted = sum(drops.get(r, 0) for r in ("full_drop_oldest", "full_reject_new",
                                             "disk_full", "max_events", "too_large"))
    log = first.log + second.log + third.log
    assert "outbox_error" not in log and "Traceback" not in log, log
    assert counted > 0, "the disk was too small for the backlog: something was dropped"
    assert len(distinct) + counted == sum(RUNS), (len(distinct), drops)
    assert len(events) - len(distinct) <= MAX_INFLIGHT, "sent again after a restart"
    assert disk_full_while_short
    # The retained outbox state said so while it lasted, and says ok again now.
    states = [json.loads(m.payload)["state"] for m in rec.on("edge-agent/test-edge/outbox/status")]
    assert "disk_full" in states and states[-1] == "ok", states
    # Three processes, ~35 s, thousands of drops: a few lines, not one per event.
    assert len(noisy_lines(log)) <= 12, noisy_lines(log)
    # The figures docs/reliability.md quotes (pytest -s shows them).
    print(f"\n{policy}: produced {sum(RUNS)}, delivered {len(distinct)}, counted drops "
          f"{counted} ({ {k: v for k, v in drops.items() if v} }), duplicates "
          f"{len(events) - len(distinct)}, log lines {len(noisy_lines(log))}")
