"""Outbox throughput: enqueue then acknowledge each message, against raw sqlite3 on the same disk.

Per message the outbox commits twice (``put``, then ``ack``); the reference does the same
with plain sqlite3 in WAL mode at the same ``synchronous`` level: ``INSERT`` + commit, then
``DELETE`` + commit, on a table ``(id INTEGER PRIMARY KEY, v BLOB)``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from agent.outbox.config import OutboxConfig
from agent.outbox.store import Outbox, OutboxMessage
from scripts.benchmarks import Row

SECTION = "outbox"
_SYNC = {"full": 2, "normal": 1}


def _count(durability: str, size: int, quick: bool) -> int:
    # Full durability pays an fsync per commit; keep each measurement around a second or two.
    counts = {("full", True): 300, ("full", False): 150, ("normal", True): 3000,
              ("normal", False): 600}
    n = counts[(durability, size <= 4096)]
    return n // 3 if quick else n


def outbox_rate(workdir: Path, durability: str, size: int, n: int) -> float:
    """Messages per second through ``put`` + ``ack`` (one message at a time)."""
    path = workdir / f"outbox-{durability}-{size}"
    shutil.rmtree(path, ignore_errors=True)
    config = OutboxConfig(path=path, durability=durability,  # type: ignore[arg-type]
                          max_bytes=1 << 30)
    payload = os.urandom(size)
    with Outbox(config) as outbox:
        # Warm-up: connection, first pages of the table.
        for _ in range(20):
            outbox.put(OutboxMessage("events/bench", payload, "bench"))
        outbox.ack([k for k, _ in outbox.claim(100)])
        start = time.perf_counter()
        for _ in range(n):
            outbox.put(OutboxMessage("events/bench", payload, "bench"))
            ((key, _),) = outbox.claim(1)
            outbox.ack((key,))
        elapsed = time.perf_counter() - start
    shutil.rmtree(path, ignore_errors=True)
    return n / elapsed


def sqlite_rate(workdir: Path, durability: str, size: int, n: int) -> float:
    """The reference: raw sqlite3, WAL, same synchronous level, INSERT/commit + DELETE/commit."""
    path = workdir / f"sqlite-{durability}-{size}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    con = sqlite3.connect(path / "q.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={_SYNC[durability]}")
    con.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, v BLOB)")
    payload = os.urandom(size)
    for i in range(20):
        con.execute("BEGIN")
        con.execute("INSERT INTO q VALUES (?, ?)", (i, payload))
        con.execute("COMMIT")
    con.execute("DELETE FROM q")
    start = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN")
        con.execute("INSERT INTO q VALUES (?, ?)", (i, payload))
        con.execute("COMMIT")
        con.execute("BEGIN")
        con.execute("DELETE FROM q WHERE id = ?", (i,))
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    shutil.rmtree(path, ignore_errors=True)
    return n / elapsed


def disk_when_full(workdir: Path, size: int, max_bytes: int) -> tuple[int, int]:
    """Bytes of (outbox.db, its WAL) once the outbox has been full for a while (drop_oldest)."""
    path = workdir / f"outbox-full-{size}"
    shutil.rmtree(path, ignore_errors=True)
    config = OutboxConfig(path=path, durability="normal", max_bytes=max_bytes)
    payload = os.urandom(size)
    batch = [OutboxMessage("events/bench", payload, "bench")] * max(1, 100_000 // size)
    with Outbox(config) as outbox:
        # Twice the bound: the oldest half is dropped, its pages reused by the newer half.
        for _ in range(2 * max_bytes // (size * len(batch)) + 1):
            outbox.put_many(batch)
        db = (path / "outbox.db").stat().st_size
        wal = path / "outbox.db-wal"
        used = db, wal.stat().st_size if wal.exists() else 0
    shutil.rmtree(path, ignore_errors=True)
    return used


def open_time(workdir: Path, max_bytes: int) -> tuple[float, float, int]:
    """Seconds to open a full outbox (1 KB events), and for raw sqlite3 to read every row.

    Opening checks the file (``PRAGMA quick_check``, which reads every page) and reads
    every row's metadata; the reference reads every row, payload included, once.
    """
    path = workdir / "outbox-open"
    shutil.rmtree(path, ignore_errors=True)
    config = OutboxConfig(path=path, durability="normal", max_bytes=max_bytes)
    payload = os.urandom(1024)
    batch = [OutboxMessage("events/bench", payload, "bench")] * 100
    with Outbox(config) as outbox:
        for _ in range(max_bytes // (1100 * len(batch))):
            outbox.put_many(batch)
        depth = outbox.stats().depth
    start = time.perf_counter()
    with Outbox(config):
        ours = time.perf_counter() - start
    con = sqlite3.connect(path / "outbox.db")
    start = time.perf_counter()
    con.execute("SELECT count(*), sum(length(payload)) FROM messages WHERE payload IS NOT NULL"
                ).fetchone()
    theirs = time.perf_counter() - start
    con.close()
    shutil.rmtree(path, ignore_errors=True)
    return ours, theirs, depth


def run(workdir: Path, quick: bool) -> list[Row]:
    """Outbox put+ack throughput for 1 KB and 100 KB, durability full and normal; disk use."""
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    rounds = 1 if quick else 3
    for durability in ("full", "normal"):
        for size in (1024, 100 * 1024):
            n = _count(durability, size, quick)
            # Alternate the two and keep each one's best round: the disk and CPU are shared,
            # and the best round is the one least disturbed by neighbours.
            ours = theirs = 0.0
            for _ in range(rounds):
                theirs = max(theirs, sqlite_rate(workdir, durability, size, n))
                ours = max(ours, outbox_rate(workdir, durability, size, n))
            label = f"{size // 1024} KB"
            row = Row(
                section=SECTION,
                name=f"put+ack {label}, durability {durability}",
                value=round(ours, 1),
                unit="events/s",
                reference_name=f"raw sqlite3 WAL synchronous={durability.upper()}",
                reference_value=round(theirs, 1),
                note=f"{n} messages, best of {rounds}",
            )
            if size == 1024:
                row.target = ">= 50% of raw sqlite3"
                row.ok = ours >= 0.5 * theirs
            rows.append(row)
            if durability == "normal" and size == 1024:
                rows.append(Row(
                    section=SECTION,
                    name=f"put+ack {label}, durability normal, absolute",
                    value=round(ours, 1),
                    unit="events/s",
                    target=">= 3000 events/s",
                    ok=ours >= 3000,
                ))
    max_bytes = (8 if quick else 32) * 1024 * 1024
    for size in (1024, 100 * 1024):
        db, wal = disk_when_full(workdir, size, max_bytes)
        rows.append(Row(
            section=SECTION,
            name=f"outbox.db size when full, {size // 1024} KB events",
            value=round(db / 1e6, 1),
            unit="MB",
            reference_name="outbox.max_bytes",
            reference_value=round(max_bytes / 1e6, 1),
            note=f"after writing twice the bound; WAL beside it {wal / 1e6:.1f} MB",
        ))
    ours, theirs, depth = open_time(workdir, max_bytes)
    rows.append(Row(
        section=SECTION,
        name="open a full outbox (quick_check + index), 1 KB events",
        value=round(ours * 1000, 1),
        unit="ms",
        reference_name="raw sqlite3: read every row once",
        reference_value=round(theirs * 1000, 1),
        note=f"{depth} messages, max_bytes {max_bytes / 1e6:.1f} MB, page cache warm",
    ))
    return rows


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="directory on the disk to measure (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for r in run(Path(tmp), args.quick):
            ratio = f"{r.ratio:.0%}" if r.ratio is not None else ""
            ref = f"{r.reference_value:>10.1f}" if r.reference_value is not None else " " * 10
            ok = {True: "ok", False: "MISS", None: ""}[r.ok]
            print(f"{r.name:<44} {r.value:>10.1f} {r.unit:<9} ref {ref} {ratio:>5} "
                  f"{r.target or '':<22} {ok}")
