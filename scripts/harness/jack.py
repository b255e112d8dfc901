"""A JACK dummy sound server for the tests and benchmarks: a sound card without hardware."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

JACKD = shutil.which("jackd") or "/usr/bin/jackd"
SHM = Path("/dev/shm")


class JackUnavailable(RuntimeError):
    """jackd is missing or cannot run here; the message says why."""


def _jackd_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in ("jackd", "jackdmp"):
                return True
        except OSError:
            continue
    return False


def reclaim_stale_servers() -> None:
    """Clear what killed JACK servers left in shared memory, when no server is running.

    JACK's registry has 8 server slots and only frees a dead server's slot when a server of
    the same name starts again; the tests kill servers on purpose (a sound card pulled out)
    under names that differ from run to run, so after a few runs every new server fails
    with "Too many servers already active". Call it before this process loads PortAudio:
    a process that has mapped the old registry does not see servers in a new one.
    """
    if _jackd_running():
        return
    for leftover in SHM.glob("jack*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def start_jackd(name: str, rate: int = 16000, period: int = 320,
                timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start ``jackd -d dummy`` as server ``name`` and wait until it answers."""
    if not Path(JACKD).exists():
        raise JackUnavailable("jackd is not installed (scripts/setup.sh --dev installs jackd2)")
    proc = subprocess.Popen(
        [JACKD, "--no-realtime", "-n", name, "-d", "dummy", "-r", str(rate), "-p", str(period)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "JACK_NO_AUDIO_RESERVATION": "1"},
    )
    waiter = shutil.which("jack_wait")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise JackUnavailable(f"jackd cannot run here: {out.strip()[-300:]}")
        if waiter is None:
            time.sleep(1.0)
            return proc
        ok = subprocess.run([waiter, "-s", name, "-c"], capture_output=True, text=True)
        if "running" in ok.stdout and "not running" not in ok.stdout:
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait(5)
    raise JackUnavailable(f"jackd did not come up within {timeout:.0f} s")


def stop_jackd(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server started by ``start_jackd`` (SIGTERM, then SIGKILL after 5 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
