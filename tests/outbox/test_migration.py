"""Upgrading from the diskcache outbox of earlier versions: the waiting messages move over."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import diskcache
import pytest

from agent.outbox import Outbox, OutboxConfig, OutboxMessage

# What earlier versions wrote: one raw bytes value per integer key, inside the SQLite row.
_HEADER = struct.Struct("<BdBBHH")
OLD = [
    (3, OutboxMessage("events/cam1", b'{"id":"a"}', "cam1")),
    (4, OutboxMessage("media/cam1/a/snapshot", b"\xff\xd8jpeg", "cam1", "media")),
    (5, OutboxMessage("composite/r1", b'{"rule":"r1"}', "r1", "composite", retain=True)),
    (7, OutboxMessage("events/cam2", b'{"id":"b"}', "cam2")),
]
COUNTERS = {"enqueued": 9, "acked": 4, "shed": 1, "next_key": 8,
            "drops": {"full_drop_oldest": 0, "full_reject_new": 0, "max_events": 0, "ttl": 1,
                      "too_large": 0}}


def write_old_store(path: Path) -> None:
    cache = diskcache.Cache(str(path), eviction_policy="none", disk_min_file_size=1 << 62)
    with cache:
        for key, m in OLD:
            kind, topic, stream = m.kind.encode(), m.topic.encode(), m.stream.encode()
            header = _HEADER.pack(1, 1_700_000_000.0 + key, int(m.retain), len(kind),
                                  len(topic), len(stream))
            cache.set(key, b"".join((header, kind, topic, stream, m.payload)))
        cache.set("outbox:counters", json.dumps(COUNTERS))


def test_waiting_messages_and_counters_move_over(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.outbox")
    path = tmp_path / "outbox"
    write_old_store(path)
    assert (path / "cache.db").exists()
    with Outbox(OutboxConfig(path=path)) as outbox:
        assert "moved 4 waiting messages from cache.db" in caplog.text
        assert not (path / "cache.db").exists()
        s = outbox.stats()
        assert (s.depth, s.enqueued, s.acked, s.shed, s.drops["ttl"]) == (4, 9, 4, 1, 1)
        assert s.oldest_age_s is not None and s.oldest_age_s > 3600  # put time kept
        got = outbox.claim(10)
        assert sorted(got) == sorted(OLD)
        # Per stream, the old order; new keys continue after the old ones.
        assert [k for k, m in got if m.stream == "cam1"] == [3, 4]
        outbox.put(OutboxMessage("events/cam1", b"new", "cam1"))
        ((new_key, _),) = outbox.claim(1)
        assert new_key >= 8


def test_a_migration_cut_short_is_done_again_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    write_old_store(path)
    Outbox(OutboxConfig(path=path)).close()
    # As if the agent had died after committing the rows but before deleting cache.db.
    write_old_store(path)
    with Outbox(OutboxConfig(path=path)) as outbox:
        assert outbox.stats().depth == 4
        assert sorted(outbox.claim(10)) == sorted(OLD)
        assert not (path / "cache.db").exists()


def test_a_large_store_moves_over_in_batches_and_bad_records_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # More messages than one batch (500), in order, and one record that cannot be decoded.
    caplog.set_level(logging.INFO, logger="agent.outbox")
    path = tmp_path / "outbox"
    cache = diskcache.Cache(str(path), eviction_policy="none", disk_min_file_size=1 << 62)
    with cache, cache.transact():
        for key in range(1, 1235):
            payload = f'{{"n":{key}}}'.encode()
            header = _HEADER.pack(1, 1_700_000_000.0, 0, 5, 11, 4)
            cache.set(key, b"".join((header, b"event", b"events/cam1", b"cam1", payload)))
        cache.set(5000, b"\x09not a record")
    with Outbox(OutboxConfig(path=path)) as outbox:
        assert "moved 1234 waiting messages" in caplog.text
        assert "1 messages in cache.db were unreadable" in caplog.text
        got = [json.loads(m.payload)["n"] for _, m in outbox.claim(2000)]
        assert got == list(range(1, 1235))
