"""Process and board figures for the stats document, read from /proc, /sys and ``os``.

No psutil on the board: every figure here is one small file read or one system call, and
every one degrades to ``None`` where the kernel does not offer it (containers, odd boards).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Thermal zone types that name the CPU or SoC on the boards we run on: Raspberry Pi
# (cpu-thermal), Jetson (CPU-therm, soc0..), Rockchip (soc-thermal), x86 (x86_pkg_temp).
_CPU_ZONE_HINTS = ("cpu", "soc", "x86_pkg", "coretemp", "k10temp", "package")


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100  # the Linux value on every architecture we ship to


def read_cpu_seconds(proc: Path) -> float | None:
    """User + system CPU seconds of the process whose /proc directory is ``proc``."""
    try:
        text = (proc / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _clock_ticks()


def read_status(proc: Path) -> dict[str, str]:
    """``/proc/<pid>/status`` as a mapping of field -> raw value."""
    try:
        lines = (proc / "status").read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _kib(value: str | None) -> int | None:
    """``"12345 kB"`` -> bytes."""
    if not value:
        return None
    try:
        return int(value.split()[0]) * 1024
    except (IndexError, ValueError):
        return None


def read_temperature(thermal: Path) -> float | None:
    """The CPU/SoC temperature in °C: the zone whose type names the CPU or SoC, else the
    hottest readable zone; None when no zone is readable."""
    readings: list[tuple[bool, float]] = []
    for zone in sorted(glob.glob(str(thermal / "thermal_zone*"))):
        path = Path(zone)
        try:
            raw = (path / "temp").read_text().strip()
            value = float(raw)
        except (OSError, ValueError):
            continue  # some zones refuse reads (e.g. EINVAL on a powered-down sensor)
        # The kernel reports millidegrees; a few drivers report whole degrees.
        celsius = value / 1000.0 if abs(value) >= 1000 else value
        if not -40.0 <= celsius <= 150.0:
            continue  # a disconnected sensor's sentinel value, not a temperature
        try:
            kind = (path / "type").read_text().strip().lower()
        except OSError:
            kind = ""
        readings.append((any(h in kind for h in _CPU_ZONE_HINTS), celsius))
    if not readings:
        return None
    preferred = [c for is_cpu, c in readings if is_cpu]
    return round(max(preferred or [c for _, c in readings]), 1)


class SystemSampler:
    """The ``system`` section of the stats document.

    Remembers the previous CPU sample, so ``cpu_percent`` is the process's CPU use over the
    time since the last ``sample()`` (the stats interval), as a percentage of one core: 150
    means one and a half cores busy. The first sample covers the time since construction.
    """

    def __init__(
        self,
        disk_path: Path,
        proc: Path = Path("/proc/self"),
        thermal: Path = Path("/sys/class/thermal"),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._disk_path = disk_path
        self._proc = proc
        self._thermal = thermal
        self._monotonic = monotonic
        self._last_cpu = read_cpu_seconds(proc)
        self._last_t = monotonic()

    def cpu_percent(self) -> float | None:
        """Percent of one core used since the previous call; None when /proc is unreadable."""
        cpu = read_cpu_seconds(self._proc)
        now = self._monotonic()
        previous, since = self._last_cpu, self._last_t
        self._last_cpu, self._last_t = cpu, now
        if cpu is None or previous is None or now <= since:
            return None
        return round(max(0.0, cpu - previous) / (now - since) * 100.0, 1)

    def disk(self) -> dict[str, int | None]:
        """Free and total bytes on the filesystem that holds the outbox."""
        path = self._disk_path
        # Before the outbox exists (or if it vanished) measure the nearest existing parent.
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            usage = shutil.disk_usage(path)
        except OSError:
            return {"free_bytes": None, "total_bytes": None}
        return {"free_bytes": usage.free, "total_bytes": usage.total}

    def sample(self) -> dict[str, Any]:
        """Every figure; each is None where the system does not offer it."""
        status = read_status(self._proc)
        try:
            load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = None
        try:
            open_fds: int | None = len(os.listdir(self._proc / "fd"))
        except OSError:
            open_fds = None
        threads = status.get("Threads")
        disk = self.disk()
        return {
            "cpu_percent": self.cpu_percent(),
            "rss_bytes": _kib(status.get("VmRSS")),
            "threads": int(threads) if threads and threads.isdigit() else None,
            "open_fds": open_fds,
            "load": load,
            "cpu_count": os.cpu_count(),
            "disk_free_bytes": disk["free_bytes"],
            "disk_total_bytes": disk["total_bytes"],
            "temperature_c": read_temperature(self._thermal),
        }
