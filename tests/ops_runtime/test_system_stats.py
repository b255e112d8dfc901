"""The ``system`` section of the stats document, from a fake /proc and /sys and the real ones."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from agent.stats import SystemSampler, read_cpu_seconds, read_temperature

TICKS = os.sysconf("SC_CLK_TCK")


def fake_proc(root: Path, utime: int, stime: int, rss_kb: int = 51200) -> Path:
    proc = root / "proc"
    (proc / "fd").mkdir(parents=True, exist_ok=True)
    for n in range(4):
        (proc / "fd" / str(n)).touch()
    # A command name with spaces and a parenthesis must not shift the fields.
    fields = ["S", "1", "1", "0", "-1", "4194304", "0", "0", "0", "0", "0", str(utime),
              str(stime)]
    (proc / "stat").write_text(f"123 (edge agent) x) {' '.join(fields)} 0 0 20 0 7 0\n")
    (proc / "status").write_text(f"Name:\tpython\nVmRSS:\t  {rss_kb} kB\nThreads:\t7\n")
    return proc


def zone(root: Path, n: int, kind: str, temp: str) -> None:
    z = root / f"thermal_zone{n}"
    z.mkdir(parents=True)
    (z / "type").write_text(kind + "\n")
    (z / "temp").write_text(temp + "\n")


def test_cpu_percent_is_over_the_interval_and_of_one_core(tmp_path: Path) -> None:
    now = [100.0]
    proc = fake_proc(tmp_path, utime=0, stime=0)
    sampler = SystemSampler(tmp_path, proc=proc, thermal=tmp_path / "none",
                            monotonic=lambda: now[0])
    # 1.5 CPU seconds in 2 s of wall time: 75 % of one core.
    fake_proc(tmp_path, utime=TICKS, stime=TICKS // 2)
    now[0] += 2.0
    first = sampler.sample()
    assert first["cpu_percent"] == 75.0
    # The next interval only counts what happened since: 2 CPU seconds in 1 s = 200 %.
    fake_proc(tmp_path, utime=TICKS * 3, stime=TICKS // 2)
    now[0] += 1.0
    assert sampler.sample()["cpu_percent"] == 200.0
    assert first["rss_bytes"] == 51200 * 1024 and first["threads"] == 7
    assert first["open_fds"] == 4
    assert first["temperature_c"] is None


def test_unreadable_proc_gives_none_not_an_error(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path / "missing" / "outbox", proc=tmp_path / "nope",
                            thermal=tmp_path / "nope")
    sample = sampler.sample()
    assert sample["cpu_percent"] is None and sample["rss_bytes"] is None
    assert sample["open_fds"] is None and sample["threads"] is None
    # The outbox does not exist yet: the disk of its nearest existing parent counts.
    assert sample["disk_free_bytes"] is not None and sample["disk_free_bytes"] > 0


def test_temperature_prefers_the_cpu_zone_else_the_hottest(tmp_path: Path) -> None:
    pi = tmp_path / "pi"
    zone(pi, 0, "gpu-thermal", "61000")
    zone(pi, 1, "cpu-thermal", "48312")
    assert read_temperature(pi) == 48.3
    other = tmp_path / "other"
    zone(other, 0, "acpitz", "35000")
    zone(other, 1, "battery", "41")  # whole degrees
    zone(other, 2, "broken", "-273000")  # a disconnected sensor's sentinel
    assert read_temperature(other) == 41.0
    unreadable = tmp_path / "unreadable"
    zone(unreadable, 0, "cpu", "garbage")
    assert read_temperature(unreadable) is None


def test_real_proc_agrees_with_psutil(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path)
    sum(i * i for i in range(300_000))  # some CPU time to measure
    sample = sampler.sample()
    me = psutil.Process()
    rss = me.memory_info().rss
    assert rss / 2 < sample["rss_bytes"] < rss * 2
    assert sample["threads"] == me.num_threads()
    assert sample["cpu_percent"] is not None and sample["cpu_percent"] >= 0
    cpu = me.cpu_times()
    measured = read_cpu_seconds(Path("/proc/self"))
    assert measured is not None and abs(measured - (cpu.user + cpu.system)) < 0.5
    assert len(sample["load"]) == 3 and sample["cpu_count"] == os.cpu_count()
    assert 0 < sample["disk_free_bytes"] <= sample["disk_total_bytes"]
