#!/usr/bin/env python3
"""Fault injection and soak against the real agent: proof that nothing is lost.

The agent runs as systemd runs it (``python -m agent run -c FILE``, a child process) with an
MJPEG camera (``demo/street.avi`` served over HTTP by ``scripts.harness.mjpeg.MjpegServer``), a
WAV microphone (``demo/sounds.wav``, looped in real time), a synthetic source at a known rate,
and the demo's two composite rules, against a real local Mosquitto. A subscriber with a
persistent session records everything while faults are injected on a seeded schedule:

- the broker stopped and restarted every ``--broker-every`` seconds;
- the agent ``kill -9``ed and restarted at random moments (about every ``--kill-every`` s);
- the camera's HTTP server stopped and restarted;
- a burst: the synthetic rate x10 (config rewritten, SIGHUP), then back;
- the outbox filled past its bound: a restart with a small ``outbox.max_bytes`` and the rules
  off, the broker down and the synthetic rate x10 until ``drop_oldest`` drops, then the
  broker back.

Then the faults stop, the sources are removed (SIGHUP) and the outbox drains (stats: depth 0,
in_flight 0). The check, per (source, run_id): received seqs are 0..max with no gap except
gaps the stats topic counted as drops, and per agent process: events accepted (its last
stats) = received + counted drops; duplicates (same event id twice) and order violations are
reported; the agent's RSS and CPU are sampled from /proc across restarts.

    .venv/bin/python scripts/chaos.py --duration 300 --seed 7 --json var/chaos.json
    .venv/bin/python scripts/chaos.py --soak --duration 1800 --json var/soak.json

``--soak``: the same setup with no faults; reports RSS growth (end vs after the first minute),
CPU (% of one core), and end-to-end latency of synthetic events (receive time - event
timestamp; synthetic events have no inference) per 5-minute slice.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.outbox.store import DROP_REASONS  # noqa: E402
from agent.stats import read_cpu_seconds, read_status  # noqa: E402
from scripts.harness.agent_process import AgentProcess, base_config  # noqa: E402
from scripts.harness.broker import MOSQUITTO, Broker, Recorder  # noqa: E402
from scripts.harness.mjpeg import MjpegServer  # noqa: E402

DEVICE = "chaos-edge"
BASE = f"edge-agent/{DEVICE}"
SYNTHETIC = "heartbeat"
CAMERA = "street"
MICROPHONE = "lobby-mic"
SLICE_S = 300.0
"""Latency percentiles are reported per slice of this many seconds."""

OVERFLOW_MAX_BYTES = 1024 * 1024
"""``outbox.max_bytes`` during the overflow phase: small enough to fill in seconds, big enough
for the largest event (a microphone event with its inline WAV clip is about 0.5 MB), so every
loss is a ``drop_oldest`` and none a ``too_large`` refusal."""

PER_PROCESS_DROPS = ("invalid_metadata", "outbox_error")
"""Drop reasons the dispatcher counts per process (reset by a restart)."""

RULES: list[dict[str, Any]] = [
    {"id": "siren-repeats", "name": "Siren heard repeatedly", "window_seconds": 60,
     "min_events": 2, "group_by": "label_and_source", "include_label_ids": ["siren"]},
    {"id": "person-and-speech", "name": "Person seen while someone speaks",
     "window_seconds": 30, "min_events": 2, "group_by": "device",
     "include_label_ids": ["person", "speech"], "require_labels": ["person", "speech"]},
]


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """One run's schedule; every random choice comes from ``seed``."""

    duration: float = 300.0
    seed: int = 1
    broker_every: float = 40.0
    kill_every: float = 45.0
    camera_every: float = 70.0
    soak: bool = False
    synthetic_rate: float = 10.0
    burst_factor: float = 10.0
    burst_s: float = 10.0
    restart_delay_s: float = 0.5
    """How long "systemd" waits before restarting a killed agent (RestartSec)."""
    sample_every: float = 2.0
    drain_timeout: float = 120.0
    overflow: bool = True


@dataclass(frozen=True)
class Fault:
    at: float
    action: str


def schedule(s: Settings) -> list[Fault]:
    """The seeded fault schedule over ``[0, duration)``; empty for a soak."""
    if s.soak:
        return []
    rng = random.Random(s.seed)
    faults: list[Fault] = []
    t = s.broker_every
    while t < s.duration:
        faults.append(Fault(t, "broker_stop"))
        faults.append(Fault(t + rng.uniform(2.0, 6.0), "broker_start"))
        t += s.broker_every
    t = rng.uniform(0.5, 1.5) * s.kill_every
    while t < s.duration:
        faults.append(Fault(t, "kill9"))
        t += rng.uniform(0.5, 1.5) * s.kill_every
    t = s.camera_every * rng.uniform(0.5, 1.0)
    while t < s.duration:
        faults.append(Fault(t, "camera_stop"))
        faults.append(Fault(t + rng.uniform(3.0, 8.0), "camera_start"))
        t += s.camera_every
    burst = s.duration * rng.uniform(0.25, 0.6)
    faults.append(Fault(burst, "burst_on"))
    faults.append(Fault(burst + s.burst_s, "burst_off"))
    return sorted((f for f in faults if f.at < s.duration), key=lambda f: f.at)


# --------------------------------------------------------------------------- helpers


@dataclass
class TimedRecorder(Recorder):
    """A ``Recorder`` that also notes when each message arrived (wall clock)."""

    received_at: list[float] = field(default_factory=list)

    def _on_message(self, client, userdata, msg):  # type: ignore[no-untyped-def]
        with self.cond:
            self.received_at.append(time.time())
            super()._on_message(client, userdata, msg)

    def snapshot(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return [(t, m.topic, m.payload)
                    for t, m in zip(self.received_at, self.messages, strict=True)]


@dataclass
class ProcSample:
    t: float
    pid: int
    rss_bytes: int | None
    cpu_s: float | None


class ProcSampler:
    """Samples VmRSS and CPU seconds of whatever process ``pid()`` names, every ``every`` s."""

    def __init__(self, pid: Callable[[], int | None], every: float, t0: float) -> None:
        self._pid = pid
        self._every = every
        self._t0 = t0
        self.samples: list[ProcSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        proc = Path(f"/proc/{pid}")
        status = read_status(proc)
        rss = status.get("VmRSS")
        cpu = read_cpu_seconds(proc)
        if rss is None or cpu is None:
            return  # between a kill and the restart
        self.samples.append(ProcSample(round(time.monotonic() - self._t0, 2), pid,
                                       int(rss.split()[0]) * 1024, cpu))

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.sample()


def demo_frames(video: Path) -> list[npt.NDArray[np.uint8]]:
    """Frames of the demo video (scaled to 320x240 to keep the MJPEG stream light)."""
    cap = cv2.VideoCapture(str(video))
    frames: list[npt.NDArray[np.uint8]] = []
    try:
        while len(frames) < 1000:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(np.asarray(cv2.resize(frame, (320, 240)), dtype=np.uint8))
    finally:
        cap.release()
    if not frames:
        raise RuntimeError(f"{video}: no frames; run scripts/make_demo_media.py")
    return frames


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def machine() -> dict[str, Any]:
    return {
        "uname": " ".join(part for part in platform.uname() if part),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "mosquitto": _mosquitto_version(),
    }


def _mosquitto_version() -> str:
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (out.stdout or out.stderr).splitlines()
    return first[0] if first else "unknown"


# --------------------------------------------------------------------------- the run


class Chaos:
    """Broker, camera server, subscriber and the agent process, with faults on demand."""

    def __init__(self, workdir: Path, settings: Settings) -> None:
        self.s = settings
        self.workdir = workdir
        (workdir / "broker").mkdir(parents=True, exist_ok=True)
        (workdir / "agent").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.broker = Broker(workdir / "broker", persistent=True)
        self.camera = MjpegServer(demo_frames(REPO / "demo" / "street.avi"), fps=10)
        self.rec: TimedRecorder | None = None
        self.agent: AgentProcess | None = None
        self.log: list[dict[str, Any]] = []
        self.faults: Counter[str] = Counter()
        self.sampler = ProcSampler(self._agent_pid, settings.sample_every, self.t0)
        self.rate = settings.synthetic_rate
        self.small_outbox = False
        self.with_sources = True
        self.camera_up = False
        self.processes: list[dict[str, Any]] = []

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def note(self, action: str, **extra: Any) -> None:
        self.log.append({"t": self.now(), "action": action, **extra})
        print(f"[{self.now():8.1f}s] {action} {extra if extra else ''}", flush=True)

    def _agent_pid(self) -> int | None:
        if self.agent is None or self.agent.proc is None or self.agent.proc.poll() is not None:
            return None
        return self.agent.proc.pid

    def config(self) -> dict[str, Any]:
        agent_dir = self.workdir / "agent"
        sources: dict[str, Any] = {}
        if self.with_sources:
            sources = {
                "cameras": [{
                    "id": CAMERA, "url": self.camera.url(), "fps": 5,
                    "reconnect_min_s": 0.5, "reconnect_max_s": 2.0, "timeout_s": 3,
                    "objects": {"track": ["person", "motorbike", "cup"],
                                "filters": {"cup": {"threshold": 0.6}}},
                    "snapshots": {"max_width": 320, "quality": 60},
                }],
                "microphones": [{
                    "id": MICROPHONE, "file": str(REPO / "demo" / "sounds.wav"), "loop": True,
                    "listen": ["speech", "siren"],
                }],
                "synthetic": [{"id": SYNTHETIC, "rate": self.rate, "labels": ["person"]}],
            }
        outbox: dict[str, Any] = {"path": str(agent_dir / "outbox")}
        if self.small_outbox:
            outbox["max_bytes"] = OVERFLOW_MAX_BYTES
        # During the overflow phase the rules are off: composite messages carry no seq, so a
        # dropped composite could not be told from a lost one; with only events in the
        # outbox, every drop must be exactly one event missing.
        rules = [] if self.small_outbox else RULES
        return base_config(agent_dir, self.broker.port, device={"id": DEVICE},
                           models={"dir": str(REPO / "models")}, outbox=outbox, rules=rules,
                           **sources)

    # -- components --------------------------------------------------------------------------

    def start(self) -> None:
        self.broker.start()
        self.rec = TimedRecorder(self.broker, [f"{BASE}/#"], client_id="chaos-recorder")
        self.camera_start()
        self.agent = AgentProcess(self.workdir / "agent", self.config())
        self.start_agent()
        self.sampler.start()

    def start_agent(self) -> None:
        assert self.agent is not None
        self.agent.write_config(self.config())
        mark = len(self.agent.log)
        self.agent.start()
        assert self.agent.proc is not None
        self.processes.append({"start_wall": time.time(), "pid": self.agent.proc.pid,
                               "ended": "running"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "running: device" not in self.agent.log[mark:]:
            if self.agent.proc is not None and self.agent.proc.poll() is not None:
                raise RuntimeError(f"agent exited at start:\n{self.agent.log[mark:]}")
            time.sleep(0.1)
        self.sampler.sample()

    def kill9(self) -> None:
        assert self.agent is not None
        self.sampler.sample()
        self.agent.kill9()
        self.processes[-1]["ended"] = "kill -9"
        self.faults["agent kill -9"] += 1
        time.sleep(self.s.restart_delay_s)
        self.start_agent()

    def restart_agent(self) -> None:
        """A clean restart (``systemctl restart``) to apply an outbox change."""
        assert self.agent is not None
        self.sampler.sample()
        self.agent.stop(15)
        self.processes[-1]["ended"] = "restart"
        self.start_agent()

    def reload(self) -> None:
        assert self.agent is not None
        self.agent.write_config(self.config())
        self.agent.signal(signal.SIGHUP)

    def broker_stop(self) -> None:
        if self.broker.proc is not None:
            self.broker.stop()
            self.faults["broker stop/start"] += 1

    def broker_start(self) -> None:
        if self.broker.proc is None:
            self.broker.start()

    def camera_stop(self) -> None:
        self.camera.stop()
        self.camera_up = False
        self.faults["camera server stop/start"] += 1

    def camera_start(self) -> None:
        if not self.camera_up:
            self.camera.start()
            self.camera_up = True

    def act(self, action: str) -> None:
        self.note(action)
        if action == "broker_stop":
            self.broker_stop()
        elif action == "broker_start":
            self.broker_start()
        elif action == "kill9":
            self.kill9()
        elif action == "camera_stop":
            self.camera_stop()
        elif action == "camera_start":
            self.camera_start()
        elif action == "burst_on":
            self.rate = self.s.synthetic_rate * self.s.burst_factor
            self.faults["burst x10 (SIGHUP)"] += 1
            self.reload()
        elif action == "burst_off":
            self.rate = self.s.synthetic_rate
            self.reload()
        else:
            raise ValueError(action)

    # -- observations ------------------------------------------------------------------------

    def stats_after(self, since_wall: float) -> list[dict[str, Any]]:
        assert self.rec is not None
        return [json.loads(p) for t, topic, p in self.rec.snapshot()
                if topic == f"{BASE}/stats" and t >= since_wall]

    def wait_drained(self, timeout: float) -> dict[str, Any] | None:
        """The first stats document, published after now, with depth 0 and in_flight 0."""
        since = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for stats in self.stats_after(since):
                ob = stats["outbox"]
                if stats["timestamp"] >= since and ob["depth"] == 0 and ob["in_flight"] == 0:
                    return stats
            time.sleep(0.5)
        return None

    def wait_log(self, needle: str, mark: int, timeout: float) -> bool:
        assert self.agent is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.agent.log[mark:]:
                return True
            time.sleep(0.2)
        return False

    # -- phases ------------------------------------------------------------------------------

    def run_schedule(self, faults: list[Fault]) -> None:
        start = time.monotonic()
        for fault in faults:
            delay = fault.at - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
            self.act(fault.action)
        left = self.s.duration - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)

    def overflow_phase(self) -> dict[str, Any]:
        """Fill the outbox past a small bound with the broker down; drop_oldest must drop.

        The phase ends with the sources removed and the outbox drained, so the process's last
        stats document holds exactly how many events it accepted.
        """
        assert self.agent is not None
        self.broker_start()
        self.camera_start()
        self.small_outbox = True
        self.note(f"overflow: restart with outbox.max_bytes={OVERFLOW_MAX_BYTES}, rules off")
        self.restart_agent()
        before = self.wait_drained(self.s.drain_timeout)
        self.note("overflow: drained before the phase", ok=before is not None)
        mark = len(self.agent.log)
        self.note("overflow: broker_stop, burst on")
        self.broker_stop()
        self.rate = self.s.synthetic_rate * self.s.burst_factor
        self.reload()
        full = self.wait_log("full (", mark, 180)
        self.note("overflow: outbox full", seen=full)
        time.sleep(5)
        self.rate = self.s.synthetic_rate
        self.note("overflow: broker_start, sources removed")
        self.broker_start()
        self.faults["outbox filled past its bound"] += 1
        self.drain_without_sources()
        self.small_outbox = False
        self.with_sources = True
        self.note("overflow: restart with the normal config")
        self.restart_agent()
        return {"full_seen": full, "max_bytes": OVERFLOW_MAX_BYTES}

    def drain_without_sources(self) -> dict[str, Any] | None:
        """SIGHUP without sources, then wait for an empty outbox: the process's final count."""
        assert self.agent is not None
        self.with_sources = False
        mark = len(self.agent.log)
        self.reload()
        self.wait_log("reload: applied", mark, 30)
        drained = self.wait_drained(self.s.drain_timeout)
        self.note("drained without sources", ok=drained is not None)
        time.sleep(2.0)  # a straggler still on its way through the broker
        return drained

    def finish(self) -> dict[str, Any] | None:
        """Faults off: everything up, sources removed (SIGHUP), wait for an empty outbox."""
        self.broker_start()
        self.camera_start()
        self.rate = self.s.synthetic_rate
        self.note("finish: faults off")
        drained = self.drain_without_sources()
        self.processes[-1]["ended"] = "final"
        return drained

    def close(self) -> None:
        self.sampler.stop()
        if self.agent is not None:
            with contextlib.suppress(Exception):
                self.agent.stop(15)
            self.agent.close()
        if self.rec is not None:
            self.rec.close()
        self.camera.stop()
        self.broker.stop()


# --------------------------------------------------------------------------- analysis


def analyse(messages: list[tuple[float, str, bytes]], samples: list[ProcSample],
            processes: list[dict[str, Any]], t0_wall: float, soak: bool) -> dict[str, Any]:
    """Everything the run proves, from what the subscriber received.

    Per (source, run): gaps in seq, duplicates, order. Per agent process (one run_id each):
    events accepted (its last stats document) against events received and drops counted
    while it ran. A process whose last stats came with its sources removed and its outbox
    empty is counted exactly (accepted - received = dropped); for a process killed with
    ``kill -9`` its last stats (at most a stats interval old) gives a lower bound, and the seq
    gaps give the rest.
    """
    per_source: dict[tuple[str, str], list[tuple[int, str, float, float]]] = defaultdict(list)
    composites: Counter[str] = Counter()
    stats: list[dict[str, Any]] = []
    for t, topic, payload in messages:
        if topic.startswith(f"{BASE}/events/"):
            event = json.loads(payload)
            per_source[(event["source"]["id"], event["run_id"])].append(
                (int(event["seq"]), event["id"], t, parse_ts(event["timestamp"])))
        elif topic.startswith(f"{BASE}/composite/"):
            composites[hashlib.sha256(payload).hexdigest()] += 1
        elif topic == f"{BASE}/stats":
            stats.append(json.loads(payload))

    starts = [p["start_wall"] for p in processes]

    def process_of(wall: float) -> int:
        return max(0, bisect.bisect_right(starts, wall + 0.5) - 1)

    sources: list[dict[str, Any]] = []
    run_process: dict[str, int] = {}
    for (source, run_id), items in sorted(per_source.items()):
        first_ts = min(ts for _, _, _, ts in items)
        run_process[run_id] = min(run_process.get(run_id, 1 << 30), process_of(first_ts))
        sources.append(_source_row(source, run_id, items))

    last_stats: dict[int, dict[str, Any]] = {}
    for doc in stats:
        last_stats[process_of(doc["timestamp"] - doc["uptime_s"])] = doc

    rows: list[dict[str, Any]] = []
    previous_drops = 0
    for i, proc in enumerate(processes):
        runs = [r for r, p in run_process.items() if p == i]
        run = runs[0] if runs else None
        mine = [row for row in sources if row["run_id"] == run] if run else []
        received = sum(row["delivered"] for row in mine)
        gaps = sum(row["gaps"] for row in mine)
        last = last_stats.get(i)
        accepted: int | None = None
        exact = False
        drops_here = 0
        if last is not None:
            accepted = int(last.get("events_accepted", 0))
            ob = last["outbox"]
            exact = not last.get("sources") and ob["depth"] == 0 and ob["in_flight"] == 0
            persisted = sum(int(last["drops"].get(r, 0)) for r in DROP_REASONS)
            drops_here = persisted - previous_drops + int(last["drops"].get("outbox_error", 0))
            previous_drops = persisted
        missing = max(accepted - received, gaps) if exact and accepted is not None else gaps
        below = max(0, (accepted or 0) - received - drops_here)  # accepted, never arrived
        rows.append({
            "process": i, "pid": proc["pid"], "ended": proc["ended"], "run_id": run,
            "accepted": accepted, "exact": exact, "received": received, "gaps": gaps,
            "missing": missing, "drops_counted": drops_here,
            "lost": max(0, missing - drops_here) + (0 if exact else below),
            "duplicates": sum(row["duplicates"] for row in mine),
        })

    final = stats[-1] if stats else {}
    drops = dict(final.get("drops", {}))
    reported = {r: int(drops[r]) for r in DROP_REASONS if drops.get(r)}
    for r in PER_PROCESS_DROPS:
        n = sum(int(d["drops"].get(r, 0)) for d in last_stats.values())
        if n:
            reported[r] = n
    counted = sum(reported.values()) - reported.get("invalid_metadata", 0)
    missing_total = sum(r["missing"] for r in rows)
    totals = {k: sum(row[k] for row in sources)
              for k in ("delivered", "gaps", "duplicates", "order_violations")}
    return {
        "events": {"produced": totals["delivered"] + missing_total, **totals,
                   "missing": missing_total},
        "lost_unexplained": sum(r["lost"] for r in rows),
        "drops_reported": reported,
        "drops_counted_total": counted,
        "missing_equal_drops": missing_total == counted
        and all(r["missing"] == r["drops_counted"] for r in rows),
        "composites": {"delivered": len(composites),
                       "duplicates": sum(n - 1 for n in composites.values())},
        "final_outbox": final.get("outbox"),
        "processes": rows,
        "sources": sources,
        "rss": _rss(samples, soak),
        "cpu": _cpu(samples),
        "latency_ms": _latency(per_source, t0_wall),
    }


def _source_row(source: str, run_id: str,
                items: list[tuple[int, str, float, float]]) -> dict[str, Any]:
    ids = Counter(i for _, i, _, _ in items)
    seqs = {s for s, _, _, _ in items}
    top = max(seqs)
    missing = sorted(set(range(top + 1)) - seqs)
    seen: set[str] = set()
    highest = -1
    order_violations = 0
    for seq, eid, _, _ in items:
        if eid in seen:
            continue
        seen.add(eid)
        if seq < highest:
            order_violations += 1
        highest = max(highest, seq)
    return {
        "source": source, "run_id": run_id, "max_seq": top, "delivered": len(ids),
        "gaps": len(missing), "duplicates": sum(n - 1 for n in ids.values()),
        "order_violations": order_violations, "missing_ranges": _ranges(missing)[:20],
    }


def _ranges(values: list[int]) -> list[str]:
    out: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:  # type: ignore[operator]
            prev = v
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return out


def _latency(per_run: dict[tuple[str, str], list[tuple[int, str, float, float]]],
             t0_wall: float) -> dict[str, Any]:
    """Receive time - event timestamp, synthetic events only (no inference), first arrival."""
    slices: dict[int, list[float]] = defaultdict(list)
    every: list[float] = []
    for (source, _), items in per_run.items():
        if source != SYNTHETIC:
            continue
        seen: set[str] = set()
        for _, eid, recv, ts in items:
            if eid in seen:
                continue
            seen.add(eid)
            ms = (recv - ts) * 1000.0
            slices[int((recv - t0_wall) // SLICE_S)].append(ms)
            every.append(ms)

    def summary(values: list[float]) -> dict[str, Any]:
        return {"n": len(values),
                **{f"p{q}": _round(percentile(values, q)) for q in (50, 95, 99)},
                "max": _round(max(values) if values else None)}

    return {"all": summary(every),
            "slices": [{"from_s": k * SLICE_S, "to_s": (k + 1) * SLICE_S, **summary(v)}
                       for k, v in sorted(slices.items())]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _rss(samples: list[ProcSample], soak: bool) -> dict[str, Any]:
    good = [s for s in samples if s.rss_bytes]
    if not good:
        return {}
    mib = [round((s.rss_bytes or 0) / 2**20, 1) for s in good]
    out: dict[str, Any] = {"min_mib": min(mib), "max_mib": max(mib), "end_mib": mib[-1],
                           "series": [[s.t, s.pid, m] for s, m in zip(good, mib, strict=True)]}
    if soak:
        first = good[0].t
        after_minute = next((s for s in good if s.t - first >= 60.0), None)
        if after_minute is not None and after_minute is not good[-1]:
            base = after_minute.rss_bytes or 1
            out["after_first_minute_mib"] = round(base / 2**20, 1)
            out["growth_pct"] = round(((good[-1].rss_bytes or 0) - base) / base * 100.0, 2)
    return out


def _cpu(samples: list[ProcSample]) -> dict[str, Any]:
    """CPU as % of one core: per process, (last - first CPU seconds) / (last - first time)."""
    by_pid: dict[int, list[ProcSample]] = defaultdict(list)
    for s in samples:
        if s.cpu_s is not None:
            by_pid[s.pid].append(s)
    busy = wall = 0.0
    for series in by_pid.values():
        if len(series) >= 2:
            busy += (series[-1].cpu_s or 0.0) - (series[0].cpu_s or 0.0)
            wall += series[-1].t - series[0].t
    return {"percent_of_core": round(busy / wall * 100.0, 1) if wall > 0 else None,
            "cpu_s": round(busy, 1), "wall_s": round(wall, 1)}


# --------------------------------------------------------------------------- entry points


def run(settings: Settings, workdir: Path) -> dict[str, Any]:
    """One fault run (or soak) in ``workdir``; returns the result document."""
    faults = schedule(settings)
    chaos = Chaos(workdir, settings)
    t0_wall = time.time()
    overflow: dict[str, Any] | None = None
    drained: dict[str, Any] | None = None
    try:
        chaos.start()
        chaos.note("started", seed=settings.seed, faults=len(faults))
        chaos.run_schedule(faults)
        if not settings.soak and settings.overflow:
            overflow = chaos.overflow_phase()
        drained = chaos.finish()
        messages = chaos.rec.snapshot() if chaos.rec else []
    finally:
        chaos.close()
    result = analyse(messages, chaos.sampler.samples, chaos.processes, t0_wall, settings.soak)
    result.update({
        "command": " ".join(["scripts/chaos.py", *sys.argv[1:]]) if __name__ == "__main__"
        else None,
        "settings": dataclasses.asdict(settings),
        "machine": machine(),
        "wall_s": round(time.time() - t0_wall, 1),
        "faults": dict(chaos.faults),
        "faults_total": sum(chaos.faults.values()),
        "overflow": overflow,
        "drained": drained is not None,
        "agent_processes": len(chaos.processes),
        "timeline": chaos.log,
    })
    result["ok"] = verdict(result, settings)
    return result


def verdict(result: dict[str, Any], settings: Settings) -> dict[str, bool]:
    """Each target, met or not."""
    ev = result["events"]
    last = result["processes"][-1] if result["processes"] else {}
    ok = {
        "drained": bool(result["drained"]),
        "no_unexplained_loss": result["lost_unexplained"] == 0,
        "missing_equal_counted_drops": bool(result["missing_equal_drops"]),
        "no_order_violations": ev["order_violations"] == 0,
        "final_run_counted_exactly": bool(last.get("exact")),
    }
    if settings.soak:
        ok["no_drops"] = result["drops_counted_total"] == 0 and ev["missing"] == 0
        ok["no_duplicates"] = ev["duplicates"] == 0
        growth = result["rss"].get("growth_pct")
        ok["rss_growth_below_5pct"] = growth is not None and growth < 5.0
        p99 = result["latency_ms"]["all"]["p99"]
        ok["latency_p99_below_250ms"] = p99 is not None and p99 < 250.0
    elif settings.overflow:
        ok["overflow_dropped"] = result["drops_counted_total"] > 0
    return ok


def print_report(result: dict[str, Any]) -> None:
    ev = result["events"]
    rss = result["rss"]
    rows = [
        ("seed", result["settings"]["seed"]),
        ("faults injected", f"{result['faults_total']} {result['faults']}"),
        ("agent processes", result["agent_processes"]),
        ("events produced", ev["produced"]),
        ("events delivered (distinct)", ev["delivered"]),
        ("events missing (gaps + never arrived)", ev["missing"]),
        ("drops reported (stats)", f"{result['drops_counted_total']} "
                                   f"{result['drops_reported']}"),
        ("lost (missing, not counted as drops)", result["lost_unexplained"]),
        ("duplicates", ev["duplicates"]),
        ("order violations", ev["order_violations"]),
        ("composites delivered / duplicated",
         f"{result['composites']['delivered']} / {result['composites']['duplicates']}"),
        ("RSS min / max / end MiB",
         f"{rss.get('min_mib')} / {rss.get('max_mib')} / {rss.get('end_mib')}"),
        ("CPU % of one core", result["cpu"]["percent_of_core"]),
    ]
    if "growth_pct" in rss:
        rows.append(("RSS after 1st minute MiB / growth %",
                     f"{rss['after_first_minute_mib']} / {rss['growth_pct']}"))
    lat = result["latency_ms"]["all"]
    rows.append(("latency ms p50/p95/p99 (synthetic)",
                 f"{lat['p50']} / {lat['p95']} / {lat['p99']} (n={lat['n']})"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")
    for sl in result["latency_ms"]["slices"]:
        print(f"  latency {sl['from_s']:>6.0f}-{sl['to_s']:<6.0f}s: p50 {sl['p50']} "
              f"p95 {sl['p95']} p99 {sl['p99']} max {sl['max']} ms (n={sl['n']})")
    print("per agent process:")
    for r in result["processes"]:
        print(f"  #{r['process']:<2} {r['run_id'] or '-':<12} ended {r['ended']:<8} accepted "
              f"{r['accepted']!s:>6}{'=' if r['exact'] else '>'} received {r['received']:>6} "
              f"missing {r['missing']:>4} drops {r['drops_counted']:>4} lost {r['lost']} "
              f"dup {r['duplicates']}")
    print("per source and run:")
    for r in result["sources"]:
        print(f"  {r['source']:<10} {r['run_id']} max seq {r['max_seq']:>6} delivered "
              f"{r['delivered']:>6} gaps {r['gaps']:>4} dup {r['duplicates']:>3} "
              f"order {r['order_violations']} {','.join(r['missing_ranges'][:5])}")
    print("targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in result["ok"].items()))


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds of scheduled faults (or of the soak)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, reported")
    parser.add_argument("--broker-every", type=float, default=40.0)
    parser.add_argument("--kill-every", type=float, default=45.0)
    parser.add_argument("--camera-every", type=float, default=70.0)
    parser.add_argument("--rate", type=float, default=10.0, help="synthetic events per second")
    parser.add_argument("--soak", action="store_true", help="no faults")
    parser.add_argument("--no-overflow", action="store_true", help="skip the overflow phase")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--workdir", help="keep broker, agent and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    settings = Settings(duration=args.duration, seed=seed, broker_every=args.broker_every,
                        kill_every=args.kill_every, camera_every=args.camera_every,
                        soak=args.soak, synthetic_rate=args.rate,
                        overflow=not args.no_overflow)
    with _workdir(args.workdir) as workdir:
        result = run(settings, workdir)
    print_report(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if all(result["ok"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
