"""Crashes and full disks, with real processes: nothing that was stored is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.outbox import Outbox, OutboxConfig

REPO = Path(__file__).resolve().parents[2]

# Puts numbered messages on two streams and prints each number once put() has returned;
# every seventh message it claims and acks the oldest few and prints "ack N" once ack()
# has returned.
PRODUCER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.outbox import Outbox, OutboxConfig, OutboxMessage
outbox = Outbox(OutboxConfig(path=Path(sys.argv[2]), durability=sys.argv[3]))
n = 0
while True:
    stream = "cam%d" % (n % 2)
    outbox.put(OutboxMessage("events/" + stream, b"%d:" % n + b"x" * 2000, stream))
    print(n, flush=True)
    if n % 7 == 6:
        batch = outbox.claim(3)
        outbox.ack([k for k, _ in batch])
        for _, m in batch:
            print("ack", int(m.payload.split(b":")[0]), flush=True)
    n += 1
"""


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_kill_9_loses_nothing(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "outbox"
    proc = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(REPO), str(path), durability],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while len(lines) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    # Read the rest through the same text wrapper: communicate() would read the raw pipe and
    # skip lines readline() already buffered.
    rest = proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else ""
    lines += rest.split("\n")
    assert len(lines) >= 300, err
    put = {int(x) for x in lines if x.isdigit()}
    acked = {int(x.split()[1]) for x in lines if x.startswith("ack ")}
    assert acked <= put

    with Outbox(OutboxConfig(path=path)) as outbox:
        got: list[int] = []
        per_stream: dict[str, list[int]] = {"cam0": [], "cam1": []}
        while batch := outbox.claim(100):
            outbox.ack(k for k, _ in batch)
            for _, m in batch:
                n = int(m.payload.split(b":")[0])
                assert m.payload == b"%d:" % n + b"x" * 2000  # not torn
                got.append(n)
                per_stream[m.stream].append(n)
    assert len(got) == len(set(got))
    assert put - acked <= set(got), "a message whose put() returned is missing"
    assert not acked & set(got), "an acknowledged message came back"
    # At most the one message being put (or acked) at the moment of the kill is extra.
    assert len(set(got) - (put - acked)) <= 3
    for ids in per_stream.values():
        assert ids == sorted(ids)


# Fills the disk (a file size limit stands in for a full SD card): puts 50 KB messages until
# put() raises, prints the number stored and the error.
FILLER = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from agent.outbox import Outbox, OutboxConfig, OutboxError, OutboxMessage
outbox = Outbox(OutboxConfig(path=Path(sys.argv[2])))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
n = 0
try:
    while n < 1000:
        outbox.put(OutboxMessage("events/cam1", b"%d:" % n + b"y" * 50_000, "cam1"))
        n += 1
except OutboxError as exc:
    print(n)
    print(exc)
    try:
        outbox.put(OutboxMessage("events/cam1", b"small", "cam1"))
        print("small put ok")
    except OutboxError:
        print("small put refused")
"""


def test_full_disk_raises_clear_error_and_keeps_what_was_stored(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    out = subprocess.run(
        [sys.executable, "-c", FILLER, str(REPO), str(path)],
        capture_output=True, text=True, timeout=120,
    )
    lines = out.stdout.splitlines()
    assert len(lines) >= 2, out.stderr
    stored = int(lines[0])
    assert 0 < stored < 1000
    assert lines[1].startswith(f"outbox {path}: cannot write: "), lines[1]
    with Outbox(OutboxConfig(path=path)) as outbox:
        payloads = []
        while batch := outbox.claim(100):
            outbox.ack(k for k, _ in batch)
            payloads += [m.payload for _, m in batch]
    expected = [b"%d:" % n + b"y" * 50_000 for n in range(stored)]
    if lines[2:] == ["small put ok"]:
        expected.append(b"small")
    assert payloads == expected
