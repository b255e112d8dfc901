"""The outbox on a real, small file system that runs full: disk pressure is a state.

A 4 MiB tmpfs holds the outbox (``max_bytes`` 1 MiB); a filler file takes the rest of the
space, the way logs or recordings fill a board's card. The outbox must keep storing and
delivering within the space left, count every message it could not keep, remove what was
delivered, open on a full disk, and say so in a few lines, not one per message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.outbox import Outbox, OutboxConfig, OutboxMessage
from tests.small_fs import fill, free_bytes, small_fs

FS_BYTES = 4 * 1024 * 1024
MIN_FREE = 256 * 1024
POLICIES = ["drop_oldest", "reject_new", "shed_images"]


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with small_fs(tmp_path / "fs", FS_BYTES) as where:
        yield where


def config(fs: Path, **kw: Any) -> OutboxConfig:
    values: dict[str, Any] = {"path": fs / "outbox", "max_bytes": 1024 * 1024,
                              "min_free_bytes": MIN_FREE, **kw}
    return OutboxConfig(**values)


def event(n: int, size: int = 1500) -> OutboxMessage:
    payload = f'{{"n":{n},"pad":"'.encode() + b"x" * size + b'"}'
    return OutboxMessage("events/s1", payload, "s1")


def number(message: OutboxMessage) -> int:
    return int(message.payload.split(b",")[0].split(b":")[1])


def deliver(outbox: Outbox, limit: int = 20) -> list[int]:
    """Claim and ack everything, ``limit`` at a time (the MQTT link's max_inflight)."""
    out: list[int] = []
    while batch := outbox.claim(limit):
        outbox.ack(k for k, _ in batch)
        out.extend(number(m) for _, m in batch)
    return out


def dropped(outbox: Outbox) -> int:
    stats = outbox.stats()
    return sum(stats.drops.values())


def outbox_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("agent.outbox") and r.levelno >= logging.INFO]


@pytest.mark.parametrize("policy", POLICIES)
def test_full_disk_with_the_broker_down_then_up(
    fs: Path, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    outbox = Outbox(config(fs, on_full=policy))
    fill(fs / "filler", leave=900 * 1024)  # the card fills up with something else
    produced = 0
    # Broker down: 3,000 events of 1.5 KB (4.5 MB) into about 0.6 MB of room.
    for _ in range(3000):
        outbox.put(event(produced))
        produced += 1
        outbox.expire()  # the daemon's housekeeping, once a second there
    assert outbox.stats().disk_full
    assert free_bytes(fs) > 0, "the outbox let the file system fill up"
    assert outbox.stats().depth > 50, "the outbox must keep what fits"
    # Broker back, space not freed: the backlog goes, new events are stored and delivered.
    delivered = deliver(outbox)
    for _ in range(500):
        assert outbox.put(event(produced)), "with room again, new events are stored"
        produced += 1
        delivered += deliver(outbox)
    assert len(delivered) == len(set(delivered))
    assert len(delivered) + dropped(outbox) == produced
    assert outbox.stats().depth == 0
    # At most a few lines for 3,500 events, none per event.
    assert len(outbox_lines(caplog)) <= 4, outbox_lines(caplog)
    outbox.close()


def test_freed_space_ends_the_disk_full_state(fs: Path) -> None:
    filler = fs / "filler"
    clock = ManualClock()
    with Outbox(config(fs), clock) as outbox:
        fill(filler, leave=500 * 1024)
        for n in range(1000):
            outbox.put(event(n))
            clock.advance(0.01)
        outbox.expire()
        assert outbox.stats().disk_full
        held = outbox.stats().bytes
        filler.unlink()
        clock.advance(1.0)  # the daemon calls expire() once a second
        outbox.expire()
        stats = outbox.stats()
        assert not stats.disk_full
        for n in range(1000, 1300):
            assert outbox.put(event(n))
        assert outbox.stats().bytes > held, "with space freed the outbox grows again"


def test_acknowledged_messages_are_removed_on_a_completely_full_disk(fs: Path) -> None:
    cfg = config(fs)
    with Outbox(cfg) as outbox:
        for n in range(300):
            assert outbox.put(event(n))
        batch = outbox.claim(20)
        fill(fs / "filler")  # nothing free at all: only the outbox's reserve is left
        assert free_bytes(fs) == 0
        outbox.ack(k for k, _ in batch)  # must not raise
        stats = outbox.stats()
        assert stats.in_flight in (0, 20)
    # Restart on the full disk: it opens, and what was acknowledged is not sent again
    # (or, if even the reserve could not hold the delete, at most that one batch of 20).
    with Outbox(cfg) as outbox:
        again = deliver(outbox)
    assert min(again) >= 0 and len(again) >= 280
    assert len(again) <= 280 + 20
    assert sorted(again) == list(range(300 - len(again), 300))


def test_pending_removals_commit_once_space_is_freed(fs: Path) -> None:
    filler = fs / "filler"
    clock = ManualClock()
    with Outbox(config(fs), clock) as outbox:
        for n in range(300):
            assert outbox.put(event(n))
        reserve = fs / "outbox" / "outbox.reserve"
        reserve.unlink(missing_ok=True)  # spent earlier
        fill(filler)
        acked = 0
        while batch := outbox.claim(20):
            outbox.ack(k for k, _ in batch)
            acked += len(batch)
        assert acked == 300
        filler.unlink()
        clock.advance(1.0)
        outbox.expire()
        stats = outbox.stats()
        assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 300)
    with Outbox(config(fs)) as outbox:
        assert deliver(outbox) == []


def test_opens_and_delivers_on_a_full_disk(fs: Path) -> None:
    cfg = config(fs)
    with Outbox(cfg) as outbox:
        for n in range(200):
            assert outbox.put(event(n))
    fill(fs / "filler")
    assert free_bytes(fs) == 0
    with Outbox(cfg) as outbox:
        assert deliver(outbox) == list(range(200))
        assert outbox.stats().depth == 0


def test_a_small_file_system_bounds_the_write_ahead_log(fs: Path) -> None:
    # No filler: max_bytes (1 MiB) must act before the WAL fills the 4 MiB file system.
    with Outbox(config(fs, max_bytes=2 * 1024 * 1024)) as outbox:
        for n in range(4000):
            outbox.put(event(n))
        stats = outbox.stats()
        assert stats.drops["full_drop_oldest"] > 0 and stats.drops["disk_full"] == 0
    assert free_bytes(fs) >= MIN_FREE // 2


def test_ttl_on_a_completely_full_disk_fails_nothing(fs: Path) -> None:
    clock = ManualClock()
    with Outbox(config(fs, ttl=10), clock) as outbox:
        for n in range(100):
            assert outbox.put(event(n))
        (fs / "outbox" / "outbox.reserve").unlink(missing_ok=True)
        fill(fs / "filler")
        clock.advance(11)  # everything has expired, and deleting it needs room
        outbox.put(event(100))  # stored or refused, never raised
        outbox.expire()
        batch = outbox.claim(10)  # expired, but not yet removable: delivered late, not lost
        assert [number(m) for _, m in batch] == list(range(10))
        (fs / "filler").unlink()
        clock.advance(1)
        outbox.expire()
        stats = outbox.stats()
        # Each of the 101 is expired, still held (the 10 in flight; event 100 if it was
        # stored) or refused: counted either way.
        assert stats.drops["ttl"] == 90
        assert stats.drops["ttl"] + stats.depth + stats.drops["disk_full"] == 101


def test_opens_on_a_full_disk_without_its_reserve_by_removing_set_aside_files(
    fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(fs)
    with Outbox(cfg) as outbox:
        for n in range(200):
            assert outbox.put(event(n))
    aside = fs / "outbox" / "outbox.db.corrupt-20260101T000000Z"
    aside.write_bytes(b"\0" * 200 * 1024)
    (fs / "outbox" / "outbox.reserve").unlink()  # spent before the restart
    fill(fs / "filler")
    with Outbox(cfg) as outbox:
        assert deliver(outbox) == list(range(200))
    assert not aside.exists()
    assert any("removed outbox.db.corrupt-20260101T000000Z" in r.getMessage()
               for r in caplog.records)
