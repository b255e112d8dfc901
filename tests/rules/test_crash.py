"""Crash consistency between the outbox and the rules: ``kill -9`` at random instants.

The agent's own wiring (``agent.dispatch.Dispatcher`` with the real ``Outbox`` and
``RuleEngine`` on disk) runs in a forked child that emits base events as fast as it can,
including copies of earlier ids with a later timestamp, while a thread ticks the rules; the
parent kills it with SIGKILL after a random few milliseconds, hundreds of times, restarting
it each time on the same directories. At the end every window is closed, and what the outbox
holds (what would be delivered) is checked: every stored base event that qualifies is in
exactly one final composite per rule, each final lists every member its open updates did,
and a consumer that reads only finals misses nothing.

The short run is part of the normal suite; the long one (more kills) is under ``soak``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock, SystemClock
from agent.config import AgentConfig
from agent.dispatch import Dispatcher
from agent.events.schema import DeviceRef, Event
from agent.outbox.store import Outbox
from agent.rules.engine import RuleEngine, from_ms
from tests.rules.helpers import LABELS, SOURCES

DEVICE = DeviceRef(id="edge-01")
RULES = [
    # Every event forms or joins a composite: each stored event must be in exactly one.
    {"id": "every", "window_seconds": 0.3, "min_events": 1, "group_by": "label_id"},
    # Needs three events of a source: an event may stay a lone candidate, never in two.
    {"id": "threes", "window_seconds": 0.5, "min_events": 3, "group_by": "source_id"},
]
CAP = 4  # composites close at the cap often, so member ids of closed composites matter


def _config(workdir: Path) -> AgentConfig:
    return AgentConfig.model_validate({
        "device": {"id": DEVICE.id},
        "outbox": {"path": str(workdir / "outbox")},
        "rules": RULES,
    })


def _engine(config: AgentConfig, workdir: Path, clock: Any) -> RuleEngine:
    return RuleEngine(config.rules, DEVICE, clock, workdir / "rules-state",
                      max_events_per_composite=CAP, update_interval_seconds=0.0)


def _event(n: int, at: float) -> Event:
    source = SOURCES[["mic-1", "cam-1", "cam-2"][n % 3]]
    return Event(
        id=str(uuid.UUID(int=n + 1, version=4)),
        kind="sound" if source.kind == "microphone" else "object",
        use_case="default", timestamp=from_ms(round(at * 1000)), device=DEVICE,
        source=source, label=LABELS[["person", "glass"][n % 2]],
    )


def _child(workdir: Path, first: int) -> None:
    """The agent's wiring, emitting until killed. Never returns."""
    config = _config(workdir)
    clock = SystemClock()
    outbox = Outbox(config.outbox, clock)
    dispatcher = Dispatcher(config, outbox, lambda: None, _engine(config, workdir, clock))

    def ticks() -> None:
        while True:
            dispatcher.tick()
            time.sleep(0.002)

    threading.Thread(target=ticks, name="rules-tick", daemon=True).start()
    rng = random.Random(first)
    n = first
    while True:
        if n > first + 3 and rng.random() < 0.15:
            # A copy of an earlier id of this run, later and from elsewhere: counts once.
            copy = _event(rng.randrange(first, n), clock.time())
            dispatcher.emit(copy.model_copy(update={"source": SOURCES["cam-2"]}))
        dispatcher.emit(_event(n, clock.time()))
        n += 1


def _kill_loop(workdir: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    for k in range(kills):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _child(workdir, k * 1_000_000)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.005, 0.08))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), f"child {k} ended by itself (status {status})"


def _close_everything(workdir: Path) -> None:
    """Start once more, an hour later, and let every window close."""
    config = _config(workdir)
    clock = ManualClock(start=time.time() + 3600)
    outbox = Outbox(config.outbox, clock)
    engine = _engine(config, workdir, clock)
    dispatcher = Dispatcher(config, outbox, lambda: None, engine)
    dispatcher.tick()
    engine.close()
    outbox.close()


def _check(workdir: Path) -> dict[str, int]:
    outbox = Outbox(_config(workdir).outbox, SystemClock())
    try:
        messages = [m for _, m in outbox.claim(10_000_000)]
    finally:
        outbox.close()
    stored = {json.loads(m.payload)["id"] for m in messages if m.kind == "event"}
    by_composite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        if m.kind == "composite":
            payload = json.loads(m.payload)
            by_composite[payload["id"]].append(payload)
    assert stored and by_composite
    in_finals: dict[str, list[str]] = {rule["id"]: [] for rule in RULES}
    for cid, updates in by_composite.items():
        finals = [u for u in updates if u["status"] == "final"]
        assert finals, f"composite {cid} never became final"
        final = finals[-1]
        assert all(f == final for f in finals), "a repeated final differs"
        members = [e["id"] for e in final["events"]]
        assert len(members) == final["event_count"] == len(set(members)) <= CAP
        seen_in_updates = {e["id"] for u in updates for e in u["events"]}
        assert seen_in_updates == set(members), "the updates and the final disagree"
        in_finals[final["rule"]["id"]].extend(members)
    for rule_id, members in in_finals.items():
        assert len(members) == len(set(members)), f"{rule_id}: an event in two composites"
    missing = stored - set(in_finals["every"])
    assert not missing, f"{len(missing)} stored events in no composite of 'every'"
    return {"stored": len(stored), "composites": len(by_composite),
            "unpublished_members": len(set(in_finals["every"]) - stored)}


def _run(tmp_path: Path, kills: int) -> None:
    _kill_loop(tmp_path, kills, seed=kills)
    _close_everything(tmp_path)
    found = _check(tmp_path)
    # Many children die while starting; the others store a few events each.
    assert found["stored"] >= 100


@pytest.mark.slow
def test_kill_9_at_random_instants_loses_no_member(tmp_path: Path) -> None:
    _run(tmp_path, kills=200)


@pytest.mark.soak
def test_kill_9_at_random_instants_many_times(tmp_path: Path) -> None:
    _run(tmp_path, kills=1000)
