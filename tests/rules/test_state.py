"""The journal: compaction keeps the state, and the sequence packing round-trips."""

from __future__ import annotations

from pathlib import Path

from agent.rules.state import FILE_NAME, pack_seqs, unpack_seqs
from tests.rules.helpers import Driver, make_event, rule


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
