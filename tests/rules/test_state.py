"""The state file: snapshots and replay keep the windows, stored events are pruned, and the
sequence packing round-trips."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

from agent.rules.engine import to_ms
from agent.rules.state import FILE_NAME, pack_seqs, unpack_seqs
from tests.rules.helpers import T0_MS, Driver, make_event, rule


def test_pack_round_trip() -> None:
    seqs = [0, 1, 2**40, 7]
    assert unpack_seqs(pack_seqs(seqs)) == seqs
    assert unpack_seqs(pack_seqs([])) == []


def test_snapshots_compact_the_journal_and_keep_the_windows(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=600, min_events=50), rule("r2", window_seconds=600,
                                                               min_events=1, group_by="none")],
               tmp_path, update_interval_seconds=0)
    d.engine._snapshot_after = 10  # compact every few events, as a long run would
    for n in range(40):
        d.process(make_event(n, n * 100, source="cam-1" if n % 2 else "mic-1"))
    d.restart()
    [formed, update] = sorted(d.process(*[make_event(40 + n, 4_000 + n) for n in range(10)]),
                              key=lambda c: c.rule.id)
    assert formed.rule.id == "r1" and len(formed.events) == 50
    assert update.rule.id == "r2" and len(update.events) == 50
    assert (tmp_path / FILE_NAME).stat().st_size < 1_000_000


def _stored_events(state_dir: Path) -> int:
    db = sqlite3.connect(state_dir / FILE_NAME)
    try:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        db.close()


def test_replay_keeps_composite_ids_and_hands_nothing_out_twice(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=60, min_events=2)], tmp_path, update_interval_seconds=0,
               max_events_per_composite=3)
    d.process(make_event(0, 0))
    [formed] = d.process(make_event(1, 100))  # formed after the last snapshot: replayed
    [closed] = d.process(make_event(2, 200))  # closed by the size cap
    assert closed.id == formed.id and closed.status == "final"
    [second] = d.process(make_event(3, 300), make_event(4, 400))
    d.restart()
    assert d.tick() == []
    [update] = d.process(make_event(5, 500))
    assert update.id == second.id and len(update.events) == 3
    assert d.process(make_event(2, 200)) == []  # a copy of a member of the capped composite
    uuid.UUID(update.id, version=4)


def test_stored_events_are_pruned_once_outside_every_window(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=1, min_events=3), rule("r2", window_seconds=2,
                                                            min_events=1, group_by="device")],
               tmp_path, update_interval_seconds=0, max_events_per_composite=10)
    d.engine._snapshot_after = d.engine._snapshot_min = 50
    for n in range(2_000):
        d.at(n * 100)
        d.process(make_event(n, n * 100, label="car" if n % 3 else "person"))
    # What the windows hold (open composites of at most 10, 20 events in the longest
    # window) and the events since the last snapshot (about 50).
    assert _stored_events(tmp_path) <= 100
    before = d.engine.stats()
    d.restart()
    after = d.engine.stats()
    assert {r: s["events_in_windows"] for r, s in after.items()} == {
        r: s["events_in_windows"] for r, s in before.items()}
    assert all(s["open_groups"] == before[r]["open_groups"] for r, s in after.items())


def test_restart_with_a_changed_rule_closes_what_was_replayed(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=60, min_events=2)], tmp_path, update_interval_seconds=0)
    [formed] = d.process(make_event(0, 0), make_event(1, 100), make_event(2, 200))
    d.at(1_000)
    d.rules = [rule(window_seconds=30, min_events=2)]
    d.restart()
    [closed] = d.tick()
    assert closed.id == formed.id and closed.status == "final" and len(closed.events) == 3
    assert closed.ended_at is not None and to_ms(closed.ended_at) == T0_MS + 1_000
    d.restart()
    assert d.tick() == []  # handed out once


def test_a_final_not_received_before_a_crash_is_handed_out_again(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=10, min_events=1)], tmp_path, update_interval_seconds=0)
    d.process(make_event(0, 0, source="mic-1"), make_event(1, 500))
    d.at(10_500)
    [final] = d.tick()
    # A crash before the caller stored it: no further call, no close.
    crashed = d.engine
    d.engine = d._open()
    [again] = d.engine.tick()
    assert again.to_json() == final.to_json()  # rebuilt from the stored members
    assert d.engine.tick() == []  # the next call was the receipt
    d.restart()
    assert d.tick() == []
    crashed._store.close()  # type: ignore[union-attr]


def test_a_pending_composite_written_before_0_3_is_read(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=10, min_events=1)], tmp_path, update_interval_seconds=0)
    [formed] = d.process(make_event(0, 0))
    d.engine.close()
    old = formed.model_dump(mode="json", exclude={"event_count"})  # the 0.2 payload
    db = sqlite3.connect(tmp_path / FILE_NAME)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('pending', ?)", (json.dumps([old]),))
    db.commit()
    db.close()
    d.engine = d._open()
    [again] = d.engine.tick()
    assert again.id == formed.id and again.event_count == 1
