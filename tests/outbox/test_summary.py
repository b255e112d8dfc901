"""Repeated drops and errors: one line, then a count a minute while it lasts."""

from __future__ import annotations

import logging

import pytest

from agent.clock import ManualClock
from agent.outbox.summary import RepeatSummary


def test_a_flood_is_one_line_then_a_count_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = ManualClock()
    summary = RepeatSummary(logging.getLogger("test.summary"), "outbox x: dropped",
                            clock.monotonic)
    # 50 a second for 3 minutes, as on a full disk.
    for _ in range(3 * 60 * 50):
        summary.add("disk_full", 1, lambda: "outbox x: cannot store new messages")
        clock.advance(0.02)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "outbox x: cannot store new messages"
    assert len(lines) == 3, lines  # the first in full, then at 1 and 2 minutes
    assert "in the last 60 s (disk_full " in lines[1]
    # It stops: what is left is reported once, then quiet; the next one starts in full.
    clock.advance(60)
    summary.tick()
    clock.advance(60)
    summary.tick()
    summary.tick()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    counted = sum(int(line.split(": ")[2].split()[0]) for line in lines[1:])
    assert counted == 3 * 60 * 50 - 1
    assert not summary.active
    summary.add("ttl", 2, lambda: "again")
    assert [r.getMessage() for r in caplog.records][-1] == "again"
