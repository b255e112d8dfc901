"""Audio: CPU per microphone stream, model vs pipeline time per window, window-end -> event.

Every figure runs the real worker (WAV source or a JACK dummy sound card through sounddevice,
the real YAMNet, lifecycle and event building) on this machine:

- CPU per stream: a 16 kHz stream paced in real time for N seconds; process CPU time over
  wall time, in % of one core (the main thread only sleeps meanwhile). With a sound card the
  capture runs in a child process (``agent.sources.capture``): its CPU is added.
  Continuous: loud audio, every window classified (2.08 windows/s at the default 0.48 s
  hop). Gated: quiet audio (-80 dBFS against a -60 dBFS gate), the classifier never runs.
  Reference: the model alone at the same window rate.
- Per window, unpaced (as fast as the file reads): CPU per window of the whole pipeline
  (read, resample, levels, front end, model, lifecycle) against the model alone.
- Latency: from the end of the window that decided an event to the event handed to the sink
  (paced replay in 20 ms chunks, like a sound card's period).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.clock import ManualClock, SystemClock
from agent.events.schema import DeviceRef, Event
from agent.inference.audio import AudioClassifier
from agent.inference.config import default_audio_models
from agent.inference.fetch import fetch_models
from agent.pipeline.audio import AudioWorker, build_audio_worker
from agent.sources.base import SourceState
from agent.sources.config import MicrophoneConfig
from scripts.benchmarks import Row, worker_cpu_share
from scripts.harness.jack import (
    JackUnavailable,
    reclaim_stale_servers,
    start_jackd,
    stop_jackd,
)

SECTION = "audio"
REPO = Path(__file__).resolve().parents[2]
RATE = 16_000


def _siren(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    cyc = t % 2.0
    freq = np.where(cyc < 1.0, 600 + 600 * cyc, 1200 - 600 * (cyc - 1.0))
    return (0.4 * (2.0 * ((np.cumsum(freq) / RATE) % 1.0) - 1.0)).astype(np.float32)


def _write(path: Path, x: np.ndarray) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _worker(cfg: MicrophoneConfig, models_dir: Path, clock: Any,
            events: list[Event] | None = None) -> AudioWorker:
    sink = events.append if events is not None else (lambda e: None)
    return build_audio_worker(cfg, default_audio_models(), models_dir, DeviceRef(id="bench"),
                              sink, clock)


def _cpu_share(worker: AudioWorker, seconds: float) -> tuple[float, dict[str, Any]]:
    """% of one core used while the worker ran, past the first window and model run."""
    return worker_cpu_share(worker, seconds, warmup=1.5)


def _proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_memory_mb(pid: int | None) -> tuple[float, float]:
    """A process's private memory (RssAnon) and its whole resident set (VmRSS), in MB."""
    if pid is None:
        return 0.0, 0.0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    kb = {x.split(":")[0]: int(x.split()[1]) for x in status.splitlines()
          if x.startswith(("RssAnon:", "VmRSS:"))}
    return kb.get("RssAnon", 0) / 1024.0, kb.get("VmRSS", 0) / 1024.0


def _capture_cpu_share(worker: AudioWorker, seconds: float
                       ) -> tuple[float, dict[str, Any], tuple[float, float]]:
    """Like ``_cpu_share`` for a sound card, counting the capture child's CPU too.

    Also returns the child's memory (``_proc_memory_mb``).
    """
    worker.start()
    time.sleep(1.5)
    pid = getattr(worker._source, "capture_pid", None)
    cpu0, wall0 = time.process_time() + _proc_cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    cpu = time.process_time() + _proc_cpu_s(pid) - cpu0
    wall = time.perf_counter() - wall0
    rss = _proc_memory_mb(pid)
    stats = worker.stats()
    worker.stop()
    return 100.0 * cpu / wall, stats, rss


def _model_ms(classifier: AudioClassifier, n: int) -> float:
    x = _siren(1.0)[: classifier.window_samples]
    feed = classifier.features(x)
    for _ in range(10):
        classifier.session.run({"audio": feed})
    c0 = time.process_time()
    for _ in range(n):
        classifier.session.run({"audio": feed})
    return (time.process_time() - c0) * 1000.0 / n


def _jack(name: str) -> subprocess.Popen[bytes] | None:
    try:
        return start_jackd(name, rate=RATE)
    except JackUnavailable:
        return None


def _jack_rows(models_dir: Path, seconds: float, continuous_ref: float) -> list[Row]:
    """The same CPU figures through the real capture path (sounddevice + JACK dummy card)."""
    reclaim_stale_servers()
    try:
        import sounddevice as sd
    except OSError:
        return []
    from agent.sources.microphone import PORTAUDIO, input_devices

    name = f"edgeagentbench{os.getpid()}"
    old = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    proc = _jack(name)
    rows: list[Row] = []
    terminated = False
    try:
        if proc is None:
            return []
        PORTAUDIO.rescan_now()
        devices = [d for d in input_devices() if "JACK" in d["hostapi"]]
        # The agent never runs PortAudio itself (its capture child does): a JACK client left
        # here would be woken every period and counted against the stream.
        sd._terminate()
        terminated = True
        if not devices:
            return []
        dev = devices[0]["name"]
        # The dummy card records digital silence (-120 dBFS): a -120 gate classifies it all.
        cont, s1, _ = _capture_cpu_share(_worker(
            MicrophoneConfig(id="jack", device=dev, min_volume=-120), models_dir,
            SystemClock()), seconds)
        gated, s2, rss = _capture_cpu_share(_worker(
            MicrophoneConfig(id="jack", device=dev, min_volume=-60), models_dir,
            SystemClock()), seconds)
        slow, s3, _ = _capture_cpu_share(_worker(
            MicrophoneConfig(id="jack", device=dev, min_volume=-60, block_seconds=None),
            models_dir, SystemClock()), seconds)
        rows.append(Row(SECTION, "capture process private memory (RssAnon), JACK", rss[0],
                        "MB", "its whole resident set (VmRSS)", rss[1], None, None,
                        "the child that runs PortAudio for one microphone; most of VmRSS is "
                        "the JACK server's shared memory"))
        rows += [
            Row(SECTION, "CPU per stream, JACK capture, continuous", cont, "% core",
                "WAV replay, continuous", continuous_ref, "< 3", cont < 3.0,
                f"{s1['classified_windows']} windows classified, overflows {s1['overflows']}"),
            Row(SECTION, "CPU per stream, JACK capture, gated silence", gated, "% core",
                "JACK continuous", cont, "< 1", gated < 1.0,
                f"{s2['gated_windows']} windows gated, overflows {s2['overflows']}; "
                "default 50 ms capture blocks"),
            Row(SECTION, "CPU per stream, JACK capture, gated, driver's 20 ms blocks", slow,
                "% core", "JACK gated, default 50 ms blocks", gated, None, None,
                f"{s3['gated_windows']} windows gated, overflows {s3['overflows']}; "
                "block_seconds: null, one Python callback per 20 ms JACK period"),
        ]
    finally:
        if proc is not None:
            if not terminated:  # before the server goes: PortAudio's JACK back end aborts
                sd._terminate()
            stop_jackd(proc)
            sd._initialize()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows


def run(workdir: Path, quick: bool) -> list[Row]:
    models_dir = REPO / "models"
    fetch_models(models_dir, ["audio"], quiet=True)
    seconds = 8.0 if quick else 30.0
    work = workdir / "audio"
    work.mkdir(parents=True, exist_ok=True)
    loud = _write(work / "loud.wav", _siren(20.0))
    quiet = _write(work / "quiet.wav",
                   (np.random.default_rng(0).standard_normal(20 * RATE) * 1e-4).astype(np.float32))
    pattern = _write(work / "pattern.wav", np.concatenate([_siren(1.5), np.zeros(int(2.5 * RATE),
                                                                                 np.float32)]))
    classifier = AudioClassifier("yamnet", default_audio_models()["yamnet"], models_dir)
    model_ms = _model_ms(classifier, 100 if quick else 400)
    windows_per_s = 1.0 / 0.48
    model_share = model_ms * windows_per_s / 10.0  # ms per s -> % of a core

    rows: list[Row] = []
    cont, s_cont = _cpu_share(_worker(MicrophoneConfig(id="loud", file=loud, loop=True,
                                                       listen=["siren"]),
                                      models_dir, SystemClock()), seconds)
    rows.append(Row(SECTION, "CPU per stream, continuous classification", cont, "% core",
                    "model alone at 2.08 windows/s", model_share, "< 3", cont < 3.0,
                    f"WAV paced in real time, {seconds:.0f} s, "
                    f"{s_cont['classified_windows']} windows"))
    gated, s_gated = _cpu_share(_worker(MicrophoneConfig(id="quiet", file=quiet, loop=True,
                                                         min_volume=-60),
                                        models_dir, SystemClock()), seconds)
    rows.append(Row(SECTION, "CPU per stream, gated quiet input", gated, "% core",
                    "continuous", cont, "< 1", gated < 1.0,
                    f"{s_gated['gated_windows']} windows gated, "
                    f"{s_gated['classified_windows']} classified"))

    # Unpaced: the whole pipeline per window against the model alone.
    long = _write(work / "long.wav", np.tile(_siren(4.0), 8 if quick else 25))
    worker = _worker(MicrophoneConfig(id="fast", file=long, realtime=False, listen=["siren"]),
                     models_dir, ManualClock())
    c0, t0 = time.process_time(), time.perf_counter()
    worker.start()
    while worker.tracker.state is not SourceState.ENDED:
        time.sleep(0.01)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    fast = worker.stats()
    worker.stop()
    per_window = cpu * 1000.0 / max(1, fast["windows"])
    rows += [
        Row(SECTION, "pipeline CPU per window (unpaced)", per_window, "ms",
            "model alone per window", model_ms, None, None,
            f"{fast['windows']} windows in {wall:.1f} s: "
            f"{fast['windows'] / wall / windows_per_s:.0f}x real time on one stream"),
        Row(SECTION, "front end + model per window, p50", fast["inference_ms_p50"], "ms",
            "model alone, p50", fast["model_ms_p50"], None, None,
            f"p95 {fast['inference_ms_p95']} ms; whole window p50 {fast['pipeline_ms_p50']} ms"),
    ]

    # Window end -> event emitted, paced like a sound card.
    events: list[Event] = []
    lat_worker = _worker(MicrophoneConfig(id="lat", file=pattern, loop=True, listen=["siren"],
                                          max_not_heard=1.0), models_dir, SystemClock(), events)
    _, s_lat = _cpu_share(lat_worker, seconds)
    p50, p95 = s_lat["event_latency_ms_p50"], s_lat["event_latency_ms_p95"]
    if p50 is not None:
        rows += [
            Row(SECTION, "window end -> event emitted, p50", p50, "ms", None, None, "< 50",
                p50 < 50.0, f"{len(events)} events (new and end), 20 ms chunks"),
            Row(SECTION, "window end -> event emitted, p95", p95, "ms", None, None, "< 50",
                p95 < 50.0, None),
        ]
    rows += _jack_rows(models_dir, seconds, cont)
    return rows
