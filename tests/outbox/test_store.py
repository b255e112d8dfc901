"""The outbox as the MQTT stage and the daemon use it: order, fairness, bounds, restarts."""

from __future__ import annotations

import base64
import json
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ManualClock
from agent.outbox import Outbox, OutboxConfig, OutboxError, OutboxMessage

MIN_BYTES = 64 * 1024  # the smallest max_bytes the config accepts


def config(path: Path, **kw: Any) -> OutboxConfig:
    return OutboxConfig(path=path / "outbox", **kw)


def msg(stream: str, n: int, size: int = 16, kind: str = "event") -> OutboxMessage:
    payload = f"{stream}:{n}:".encode().ljust(size, b".")
    return OutboxMessage(f"events/{stream}", payload, stream, kind)


def drain(outbox: Outbox) -> list[OutboxMessage]:
    """Claim and ack everything claimable, in claim order."""
    out: list[OutboxMessage] = []
    while batch := outbox.claim(100):
        outbox.ack(k for k, _ in batch)
        out.extend(m for _, m in batch)
    return out


def record_size(tmp_path: Path, message: OutboxMessage) -> int:
    """Bytes one message counts against max_bytes (measured, not assumed)."""
    with Outbox(OutboxConfig(path=tmp_path / "probe")) as probe:
        probe.put(message)
        return probe.stats().bytes


def test_put_claim_ack_release(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        assert outbox.claim(10) == []
        assert outbox.put(msg("cam1", 0))
        assert outbox.put(OutboxMessage("events/cam1", b"x", "cam1", "event", retain=True))
        batch = outbox.claim(10)
        assert [m for _, m in batch] == [
            msg("cam1", 0), OutboxMessage("events/cam1", b"x", "cam1", "event", True)
        ]
        keys = [k for k, _ in batch]
        assert keys == sorted(keys)
        assert outbox.claim(10) == []  # already claimed
        assert outbox.stats().in_flight == 2
        outbox.release(keys[1:])
        assert outbox.claim(10) == batch[1:]
        outbox.ack(keys)
        outbox.ack(keys)  # acknowledging twice is harmless
        s = outbox.stats()
        assert (s.depth, s.bytes, s.in_flight, s.enqueued, s.acked) == (0, 0, 0, 2, 2)
        assert s.oldest_age_s is None


def test_release_puts_messages_back_in_order(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        for n in range(6):
            outbox.put(msg("a", n))
        first = outbox.claim(3)
        second = outbox.claim(2)
        outbox.release(k for k, _ in second)
        outbox.release(k for k, _ in first)
        assert [m for _, m in outbox.claim(10)] == [msg("a", n) for n in range(6)]


def test_order_per_stream_and_round_robin(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        for n in range(50):
            outbox.put(msg("backlog", n))
        outbox.put(msg("fresh", 0))
        outbox.put(msg("other", 0))
        batch = [m for _, m in outbox.claim(3)]
        # A backlog of one stream does not keep the others waiting behind it.
        assert sorted(m.stream for m in batch) == ["backlog", "fresh", "other"]
        rest = [m for _, m in outbox.claim(100)]
        assert [m for m in batch + rest if m.stream == "backlog"] == [
            msg("backlog", n) for n in range(50)
        ]


def test_put_many_is_all_or_nothing(tmp_path: Path) -> None:
    with Outbox(config(tmp_path, max_bytes=MIN_BYTES, on_full="reject_new")) as outbox:
        event = msg("cam1", 0)
        media = OutboxMessage("media/e1/input", b"\xff" * (MIN_BYTES // 2), "cam1", "media")
        assert outbox.put_many([event, media])
        assert not outbox.put_many([msg("cam1", 1), media])  # the second does not fit
        assert [m for _, m in outbox.claim(10)] == [event, media]
        assert outbox.stats().drops["full_reject_new"] == 2


def test_reopen_keeps_unacked_and_counters(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        for n in range(5):
            outbox.put(msg("a", n))
            outbox.put(msg("b", n))
        batch = outbox.claim(4)
        outbox.ack(k for k, m in batch if m.stream == "a")
        last_key = max(k for k, _ in outbox.claim(100))
    with Outbox(config(tmp_path)) as outbox:
        s = outbox.stats()
        assert (s.depth, s.in_flight, s.enqueued, s.acked) == (8, 0, 10, 2)
        outbox.put(msg("a", 5))
        got = outbox.claim(100)
        assert [m for _, m in got if m.stream == "a"] == [msg("a", n) for n in range(2, 6)]
        assert [m for _, m in got if m.stream == "b"] == [msg("b", n) for n in range(5)]
        # New keys continue after the stored ones.
        assert max(k for k, _ in got) > last_key


def test_drop_oldest_counts_and_survivors(tmp_path: Path) -> None:
    size = record_size(tmp_path, msg("a", 0, 10_000))
    fit = MIN_BYTES // size
    with Outbox(config(tmp_path, max_bytes=MIN_BYTES)) as outbox:
        for n in range(fit + 3):
            assert outbox.put(msg("a", n, 10_000))
        s = outbox.stats()
        assert s.drops["full_drop_oldest"] == 3
        assert s.depth == fit and s.bytes <= MIN_BYTES
        assert drain(outbox) == [msg("a", n, 10_000) for n in range(3, fit + 3)]


def test_reject_new_counts_and_survivors(tmp_path: Path) -> None:
    size = record_size(tmp_path, msg("a", 0, 10_000))
    fit = MIN_BYTES // size
    with Outbox(config(tmp_path, max_bytes=MIN_BYTES, on_full="reject_new")) as outbox:
        results = [outbox.put(msg("a", n, 10_000)) for n in range(fit + 3)]
        assert results == [True] * fit + [False] * 3
        assert outbox.stats().drops["full_reject_new"] == 3
        assert drain(outbox) == [msg("a", n, 10_000) for n in range(fit)]
        assert outbox.put(msg("a", 99, 10_000))  # room again once delivered


def test_too_large_is_refused_and_counted(tmp_path: Path) -> None:
    with Outbox(config(tmp_path, max_bytes=MIN_BYTES)) as outbox:
        outbox.put(msg("a", 0))
        assert not outbox.put(msg("a", 1, MIN_BYTES + 1))
        s = outbox.stats()
        assert s.drops["too_large"] == 1 and s.drops["full_drop_oldest"] == 0
        assert drain(outbox) == [msg("a", 0)]


def test_max_events_drops_oldest(tmp_path: Path) -> None:
    with Outbox(config(tmp_path, max_events=5)) as outbox:
        for n in range(8):
            outbox.put(msg("a" if n % 2 else "b", n))
        s = outbox.stats()
        assert s.depth == 5 and s.drops["max_events"] == 3 and s.drops["full_drop_oldest"] == 0
        assert sorted(drain(outbox), key=lambda m: m.payload[2:]) == [
            msg("a" if n % 2 else "b", n) for n in range(3, 8)
        ]


def test_in_flight_messages_are_dropped_last(tmp_path: Path) -> None:
    with Outbox(config(tmp_path, max_events=3)) as outbox:
        for n in range(3):
            outbox.put(msg("a", n))
        ((key, _),) = outbox.claim(1)
        outbox.put(msg("a", 3))  # drops message 1, not the in-flight message 0
        outbox.ack([key])
        assert drain(outbox) == [msg("a", 2), msg("a", 3)]


def test_ttl_with_manual_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    with Outbox(config(tmp_path, ttl=60), clock=clock) as outbox:
        outbox.put(msg("a", 0))
        outbox.put(msg("b", 0))
        clock.advance(30)
        outbox.put(msg("a", 1))
        assert outbox.stats().oldest_age_s == pytest.approx(30)
        clock.advance(31)
        assert outbox.expire() == 2
        assert outbox.expire() == 0
        s = outbox.stats()
        assert s.drops["ttl"] == 2 and s.depth == 1
        clock.advance(60)
        assert outbox.claim(10) == []  # expired lazily on claim as well
        assert outbox.stats().drops["ttl"] == 3
    with Outbox(config(tmp_path, ttl=60), clock=clock) as outbox:
        assert outbox.stats().drops["ttl"] == 3


def _event_with_media(n: int, image_bytes: int) -> bytes:
    data = base64.b64encode(b"\x89PNG" + b"\0" * image_bytes).decode()
    return json.dumps({
        "id": f"e{n}", "label": "person",
        "images": [{"role": "snapshot", "mime": "image/jpeg", "data": data}],
        "audio": {"mime": "audio/wav", "data": data, "duration_s": 2.0},
    }).encode()


def test_shed_images_strips_and_drops_media_first(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_bytes=MIN_BYTES, on_full="shed_images")
    with Outbox(cfg) as outbox:
        # About 8 KB of inline media per event, and one 30 KB media message.
        outbox.put(OutboxMessage("events/cam1", _event_with_media(0, 3000), "cam1"))
        outbox.put(OutboxMessage("media/e0/input", b"\xff" * 30_000, "cam1", "media"))
        outbox.put(OutboxMessage("composite/r1", b'{"rule":"r1"}', "r1", "composite"))
        for n in range(1, 4):
            outbox.put(OutboxMessage("events/cam1", _event_with_media(n, 3000), "cam1"))
        assert outbox.stats().shed == 0
        # Event 4 does not fit: stripping the oldest event (0) frees enough.
        outbox.put(OutboxMessage("events/cam1", _event_with_media(4, 3000), "cam1"))
        s = outbox.stats()
        assert s.shed == 1 and s.depth == 7 and s.bytes <= MIN_BYTES
        # Event 5 does not fit either: the next oldest to shed is the media message.
        outbox.put(OutboxMessage("events/cam1", _event_with_media(5, 3000), "cam1"))
        s = outbox.stats()
        assert s.shed == 2 and s.depth == 7 and s.bytes <= MIN_BYTES
        assert s.drops["full_drop_oldest"] == 0
        got = drain(outbox)
    assert [m.kind for m in got] == ["event", "composite"] + ["event"] * 5
    first = json.loads(got[0].payload)
    assert first["images"][0]["data"] is None and first["audio"]["data"] is None
    # Only the data became null; everything else is as it was.
    assert first["images"][0]["mime"] == "image/jpeg" and first["audio"]["duration_s"] == 2.0
    assert first["id"] == "e0" and set(first) == {"id", "label", "images", "audio"}
    for m in got[2:]:
        assert json.loads(m.payload)["images"][0]["data"] is not None


def test_shed_images_drops_oldest_when_nothing_left_to_shed(tmp_path: Path) -> None:
    size = record_size(tmp_path, msg("a", 0, 10_000))
    fit = MIN_BYTES // size
    cfg = config(tmp_path, max_bytes=MIN_BYTES, on_full="shed_images")
    with Outbox(cfg) as outbox:
        for n in range(fit + 2):
            outbox.put(msg("a", n, 10_000))
        s = outbox.stats()
        assert s.shed == 0 and s.drops["full_drop_oldest"] == 2
        assert drain(outbox) == [msg("a", n, 10_000) for n in range(2, fit + 2)]


def test_drop_counters_survive_reopen(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_events=2, max_bytes=MIN_BYTES)
    with Outbox(cfg) as outbox:
        for n in range(5):
            outbox.put(msg("a", n))
        assert not outbox.put(msg("a", 9, MIN_BYTES * 5))
    with Outbox(cfg) as outbox:
        s = outbox.stats()
        assert s.drops["max_events"] == 3 and s.drops["too_large"] == 1
        assert s.enqueued == 5 and s.depth == 2


def test_drops_are_persisted_without_close(tmp_path: Path) -> None:
    """Drops are committed with the rows they remove, not at close."""
    cfg = config(tmp_path, max_events=2)
    outbox = Outbox(cfg)
    for n in range(4):
        outbox.put(msg("a", n))
    del outbox  # no close: as after a crash
    with Outbox(cfg) as again:
        assert again.stats().drops["max_events"] == 2


def test_wait_wakes_on_put(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        assert not outbox.wait(0)
        assert not outbox.wait(0.01)
        woke: list[bool] = []
        waiter = threading.Thread(target=lambda: woke.append(outbox.wait(30)), name="waiter")
        waiter.start()
        outbox.put(msg("a", 0))
        waiter.join(30)
        assert woke == [True]
        assert outbox.wait(0)


def test_concurrent_producers_keep_order_per_stream(tmp_path: Path) -> None:
    with Outbox(config(tmp_path)) as outbox:
        def produce(stream: str) -> None:
            for n in range(200):
                outbox.put(msg(stream, n))

        threads = [threading.Thread(target=produce, args=(f"s{i}",), name=f"producer-{i}")
                   for i in range(4)]
        got: list[OutboxMessage] = []
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) or outbox.wait(0):
            if outbox.wait(0.05):
                got.extend(drain(outbox))
        for t in threads:
            t.join()
        got.extend(drain(outbox))
        for i in range(4):
            assert [m for m in got if m.stream == f"s{i}"] == [msg(f"s{i}", n) for n in range(200)]
        s = outbox.stats()
        assert s.depth == 0 and s.enqueued == s.acked == 800


def test_claims_and_puts_go_on_while_an_ack_commits(tmp_path: Path) -> None:
    # A slow commit (an fsync on an SD card) must not stall delivery: claim reads on while
    # the acknowledged rows are being deleted, and a put counts them as already gone.
    with Outbox(config(tmp_path, max_events=4)) as outbox:
        for n in range(4):
            outbox.put(msg("a", n))
        acked = [k for k, _ in outbox.claim(2)]
        blocker = sqlite3.connect(tmp_path / "outbox" / "outbox.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the ack's delete waits
        acker = threading.Thread(target=outbox.ack, args=(acked,), name="acker")
        acker.start()
        deadline = time.monotonic() + 10
        while not outbox._acking and time.monotonic() < deadline:  # only to synchronise
            time.sleep(0.005)
        assert outbox._acking, "the ack never started"
        assert [m for _, m in outbox.claim(1)] == [msg("a", 2)]
        assert acker.is_alive()  # the claim did not wait for the commit
        putter = threading.Thread(target=outbox.put, args=(msg("a", 4),), name="putter")
        putter.start()
        time.sleep(0.1)
        blocker.execute("ROLLBACK")
        blocker.close()
        acker.join(10)
        putter.join(10)
        s = outbox.stats()
        assert s.drops["max_events"] == 0  # the two acknowledged made room; nothing dropped
        assert (s.depth, s.acked, s.enqueued) == (3, 2, 5)
        outbox.release([k for k in range(1, 10)])
        assert drain(outbox) == [msg("a", 2), msg("a", 3), msg("a", 4)]


def test_acks_on_their_own_thread_under_a_full_bound_count_every_message(tmp_path: Path
                                                                          ) -> None:
    # As the daemon runs it: producers, a delivery loop, acknowledgements on another thread,
    # and a bound small enough that old messages are dropped all the time.
    total, streams = 1500, 3
    with Outbox(config(tmp_path, max_events=50)) as outbox:
        acks: queue.SimpleQueue[list[int] | None] = queue.SimpleQueue()
        delivered: list[OutboxMessage] = []

        def produce(stream: str) -> None:
            for n in range(total // streams):
                assert outbox.put(msg(stream, n))

        def acknowledge() -> None:
            while (keys := acks.get()) is not None:
                outbox.ack(keys)

        producers = [threading.Thread(target=produce, args=(f"s{i}",), name=f"producer-{i}")
                     for i in range(streams)]
        acker = threading.Thread(target=acknowledge, name="acker")
        acker.start()
        for t in producers:
            t.start()
        while any(t.is_alive() for t in producers) or outbox.wait(0):
            batch = outbox.claim(20)
            delivered.extend(m for _, m in batch)
            if batch:
                acks.put([k for k, _ in batch])
            else:
                outbox.wait(0.01)
        acks.put(None)
        acker.join(30)
        s = outbox.stats()
        assert s.depth == 0 and s.in_flight == 0
        # Each message is counted once: acknowledged or dropped. (One dropped while in
        # flight was sent too; its late acknowledgement is ignored.)
        assert s.acked + s.drops["max_events"] == total == s.enqueued
        assert len(set(delivered)) == len(delivered) >= s.acked
        for i in range(streams):
            mine = [m for m in delivered if m.stream == f"s{i}"]
            assert mine == sorted(mine, key=lambda m: int(m.payload.split(b":")[1]))


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutboxError, match=f"outbox {blocker}/outbox: cannot create"):
        Outbox(OutboxConfig(path=blocker / "outbox"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_unwritable_directory(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.mkdir()
    path.chmod(0o500)
    try:
        with pytest.raises(OutboxError, match=f"outbox {path}: cannot"):
            Outbox(OutboxConfig(path=path))
    finally:
        path.chmod(0o700)


@pytest.mark.parametrize("name", ["outbox.db", "cache.db"])  # cache.db: an earlier version's
def test_not_a_database_is_set_aside_and_the_outbox_opens(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox"
    path.mkdir()
    (path / name).write_bytes(b"this is not sqlite" * 100)
    with Outbox(OutboxConfig(path=path)) as outbox:
        assert outbox.put(msg("a", 0))
        assert [m.payload for m in drain(outbox)] == [msg("a", 0).payload]
    (aside,) = path.glob(f"{name}.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not sqlite")  # kept for a post-mortem
    (line,) = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert str(path / name) in line and "file is not a database" in line and aside.name in line


def test_second_process_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = config(tmp_path)
    with Outbox(cfg):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from pathlib import Path;"
            "from agent.outbox import Outbox, OutboxConfig, OutboxError\n"
            "try:\n Outbox(OutboxConfig(path=Path(sys.argv[2])))\n"
            "except OutboxError as e:\n print(e)"
        )
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run([sys.executable, "-c", code, str(repo), str(cfg.path)],
                             capture_output=True, text=True, timeout=60)
        assert "in use by another process" in out.stdout, out.stderr


def test_closed_outbox_raises(tmp_path: Path) -> None:
    outbox = Outbox(config(tmp_path))
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.put(msg("a", 0))
    assert not outbox.wait(0.01)
