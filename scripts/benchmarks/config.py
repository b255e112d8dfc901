"""What a hostile configuration costs ``edge-agent check-config``: wall time and peak RSS.

Each input is checked by a fresh process (``edge-agent check-config``) that reports its own
peak RSS (VmHWM) as it exits; the median of a few runs is reported. The reference is the
same command on a small valid file, in the same run: process start-up and imports are most of
both. Targets (issue 13): under 2 s and 200 MB each, exit 78.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scripts.benchmarks import Row

SECTION = "config"
REPO = Path(__file__).resolve().parents[2]
MAX_S = 2.0
MAX_MIB = 200.0


def _bomb() -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return ("\n".join(lines) + "\n").encode()


def _write(content: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "agent.yaml"
        path.write_bytes(content)
        return path
    return make


def _fifo(tmp: Path) -> Path:
    path = tmp / "agent.fifo"
    os.mkfifo(path)
    return path


CASES: dict[str, Callable[[Path], Path]] = {
    "alias bomb, 1 KB (9^9 values)": _write(_bomb()),
    "flow list of 450,000 values, 900 KB": _write(b"x: [" + b"1," * 450_000 + b"1]\n"),
    "5,000 nested lists": _write(b"x: " + b"[" * 5000 + b"1" + b"]" * 5000 + b"\n"),
    "2 MB file": _write(b"# " + b"x" * 2_000_000 + b"\n"),
    "binary (not UTF-8)": _write(bytes(range(256)) * 64),
    "/dev/zero": lambda tmp: Path("/dev/zero"),
    "a FIFO": _fifo,
}


# ``python -m agent`` that writes its own peak RSS (VmHWM) to $BENCH_HWM as it exits; wait4's
# ru_maxrss would keep the high-water mark of this process from before exec.
MEASURED_AGENT = """
import atexit, os, sys
def _hwm():
    with open("/proc/self/status") as f, open(os.environ["BENCH_HWM"], "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM")).split()[1])
atexit.register(_hwm)
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def measure(path: Path, cwd: Path) -> tuple[int, float, float]:
    """Exit code, wall seconds and peak RSS (MiB) of one check-config process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["EDGE_AGENT_OUTBOX__PATH"] = str(cwd / "outbox")
    env["BENCH_HWM"] = str(cwd / "hwm")
    start = time.monotonic()
    code = subprocess.call([sys.executable, "-c", MEASURED_AGENT, "check-config", "-c",
                            str(path)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    return code, seconds, int((cwd / "hwm").read_text()) / 1024


def median_of(make: Callable[[Path], Path], workdir: Path, runs: int) -> tuple[int, float,
                                                                               float]:
    results = []
    for i in range(runs):
        tmp = workdir / f"case-{i}-{time.monotonic_ns()}"
        tmp.mkdir()
        results.append(measure(make(tmp), tmp))
    codes = {code for code, _, _ in results}
    return (codes.pop() if len(codes) == 1 else -1,
            statistics.median(s for _, s, _ in results),
            statistics.median(m for _, _, m in results))


def run(workdir: Path, quick: bool) -> list[Row]:
    """The config section of the benchmark table."""
    runs = 1 if quick else 3
    ref_code, ref_s, ref_mib = median_of(_write(b"mqtt:\n  port: 1883\n"), workdir, runs)
    assert ref_code == 0, "the reference file must be valid"
    rows = []
    for name, make in CASES.items():
        code, seconds, mib = median_of(make, workdir, runs)
        note = None if code == 78 else f"exit {code}, expected 78"
        rows.append(Row(SECTION, f"check-config: {name}", seconds, "s",
                        "a valid 2-line file", ref_s, f"<= {MAX_S:g} s, exit 78",
                        seconds <= MAX_S and code == 78, note))
        rows.append(Row(SECTION, f"peak RSS: {name}", mib, "MiB", "a valid 2-line file",
                        ref_mib, f"<= {MAX_MIB:g} MiB", mib <= MAX_MIB))
    return rows
