"""A damaged ``outbox.db`` never keeps the outbox closed: it is set aside, what can be read
is saved into a fresh outbox, the rest is counted, and the set-aside files make way first
when room is needed."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from agent.outbox import Outbox, OutboxConfig, OutboxMessage

COUNT = 500


def config(tmp_path: Path, **kw: Any) -> OutboxConfig:
    return OutboxConfig(path=tmp_path / "outbox", **kw)


def event(n: int) -> OutboxMessage:
    payload = json.dumps({"n": n, "pad": "x" * 1000}).encode()
    return OutboxMessage("events/s1", payload, "s1")


def delivered(outbox: Outbox) -> list[int]:
    out: list[int] = []
    while batch := outbox.claim(50):
        outbox.ack(k for k, _ in batch)
        out.extend(json.loads(m.payload)["n"] for _, m in batch)
    return out


def damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    if how == "random_bytes_in_the_middle":
        rng = random.Random(7)
        middle = len(data) // 2 // 4096 * 4096
        noise = bytes(rng.randrange(256) for _ in range(3 * 4096))
        db.write_bytes(data[:middle] + noise + data[middle + len(noise):])
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    else:
        db.write_text("edge-agent outbox\nnot a database at all\n" * 50)


@pytest.mark.parametrize("how", ["random_bytes_in_the_middle", "truncated", "text"])
def test_corrupt_outbox_is_salvaged_and_counted(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(tmp_path)
    with Outbox(cfg) as outbox:
        for n in range(COUNT):
            assert outbox.put(event(n))
    db = cfg.path / "outbox.db"
    assert not (cfg.path / "outbox.db-wal").exists()  # checkpointed at close
    damage(db, how)

    with Outbox(cfg) as outbox:
        corrupt = outbox.stats().drops["corrupt"]
        got = delivered(outbox)
        assert outbox.put(event(COUNT)), "the fresh outbox takes new messages"
        assert delivered(outbox) == [COUNT]
    # Oldest first, each message intact, nothing twice; the rest counted.
    assert got == sorted(set(got)) and set(got) <= set(range(COUNT))
    if how == "text":
        assert got == [] and corrupt == 0  # nothing readable, and no count to be had
    else:
        assert 0 < len(got) < COUNT
        assert len(got) + corrupt == COUNT
    (aside,) = cfg.path.glob("outbox.db.corrupt-*")
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and "corrupt" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(db) in lines[0] and aside.name in lines[0]
    if how != "text":
        assert f"{len(got)} messages saved" in lines[0] and f"{corrupt} unreadable" in lines[0]

    # The counts survive a restart; the fresh file is sound.
    with Outbox(cfg) as outbox:
        assert outbox.stats().drops["corrupt"] == corrupt
        assert delivered(outbox) == []


def test_set_aside_files_count_against_max_bytes_and_go_oldest_first(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_bytes=1024 * 1024, min_free_bytes=0)
    cfg.path.mkdir()
    older = cfg.path / "outbox.db.corrupt-20260101T000000Z"
    newer = cfg.path / "outbox.db.corrupt-20260102T000000Z"
    older.write_bytes(b"\0" * 400 * 1024)
    newer.write_bytes(b"\0" * 400 * 1024)
    with Outbox(cfg) as outbox:
        assert outbox.stats().set_aside_bytes == 800 * 1024
        for n in range(200):  # ~210 KB: fits beside both
            assert outbox.put(event(n))
        assert older.exists() and newer.exists()
        for n in range(200, 500):  # ~320 KB more: the older one goes
            assert outbox.put(event(n))
        assert not older.exists() and newer.exists()
        for n in range(500, 900):  # ~420 KB more: the newer one too, still no drops
            assert outbox.put(event(n))
        stats = outbox.stats()
        assert not newer.exists() and stats.set_aside_bytes == 0
        assert sum(stats.drops.values()) == 0 and stats.depth == 900
