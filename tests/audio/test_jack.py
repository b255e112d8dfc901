"""The real capture path: sounddevice -> PortAudio -> a JACK dummy sound card.

``jackd -d dummy`` is a sound card without hardware: its capture ports deliver silence at
16 kHz in 20 ms periods, driven by the server's own clock. PortAudio sees a JACK server only
if it is running when PortAudio initialises, so the fixture re-initialises it after start.

PortAudio's JACK host API aborts the whole process if it is shut down after its server went
away, so the in-process fixture (which lists devices here) shuts PortAudio down before
stopping jackd. The microphone itself captures in a child process of its own
(``agent.sources.capture``), so a test may kill the server under a running microphone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sources.base import SourceState
from scripts.harness.jack import JackUnavailable, start_jackd, stop_jackd
from tests.audio import samples
from tests.audio.samples import REPO
from tests.audio.test_worker import errored, start, wait_for

# Fixtures shared by the audio tests (pytest finds them as module attributes).
models_dir = samples.models_dir

def _start_jackd(name: str) -> subprocess.Popen[bytes]:
    try:
        return start_jackd(name)
    except JackUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def jack(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A JACK dummy server that this process's PortAudio sees as a sound card."""
    sd = pytest.importorskip("sounddevice")
    from agent.sources.microphone import PORTAUDIO, input_devices

    name = f"edgeagent{os.getpid()}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    proc = _start_jackd(name)
    try:
        PORTAUDIO.rescan_now()
        jack_inputs = [d for d in input_devices() if "JACK" in d["hostapi"]]
        if not jack_inputs:
            pytest.skip("this PortAudio has no JACK support compiled in")
        yield jack_inputs[0]["name"]
    finally:
        sd._terminate()  # while the server still runs (see the module docstring)
        stop_jackd(proc)
        sd._initialize()


def test_microphone_captures_from_jack(jack: str, models_dir: Path) -> None:
    run = start(models_dir, id="jackmic", device=jack, min_volume=-60, realtime=True)
    try:
        wait_for(lambda: run.worker.stats()["windows"] >= 3, timeout=30)  # ~2 s of audio
        stats = run.worker.stats()
        assert stats["state"] == "running"
        assert stats["overflows"] == 0  # the callback never lost a block to the reader
        # (driver_overruns, JACK's own xruns, depend on how loaded the machine is: not ours.)
        # The dummy card records digital silence: every window gated, the model never run.
        assert stats["gated_windows"] == stats["windows"] and stats["classified_windows"] == 0
        assert stats["dbfs_last"] == -120.0
        assert run.states[0].state is SourceState.RUNNING and run.states[0].detail == jack
    finally:
        run.worker.stop()
    assert run.worker.tracker.state is SourceState.STOPPED


def test_unsupported_rate_and_channels_name_the_microphone(jack: str, models_dir: Path) -> None:
    detail = errored(start(models_dir, id="cd", device=jack, sample_rate=44100, realtime=True))
    assert detail.startswith(f"microphone cd: device {jack!r} does not support 44100 Hz")
    detail = errored(start(models_dir, id="surround", device=jack, channels=6, realtime=True))
    assert detail.startswith(f"microphone surround: device {jack!r} has 2 input channel(s)")


def test_stereo_capture_by_index(jack: str, models_dir: Path) -> None:
    from agent.sources.microphone import input_devices

    index = next(d["index"] for d in input_devices() if d["name"] == jack)
    run = start(models_dir, id="stereo", device=index, channels=2, realtime=True)
    try:
        wait_for(lambda: run.worker.stats()["windows"] >= 2, timeout=30)
        assert run.worker.stats()["overflows"] == 0
    finally:
        run.worker.stop()


CHILD = r"""
import json, os, sys, time
from pathlib import Path
from agent.clock import SystemClock
from agent.events.schema import DeviceRef
from agent.inference.config import default_audio_models
from agent.pipeline.audio import build_audio_worker
from agent.sources.microphone import PORTAUDIO
from agent.sources.config import MicrophoneConfig

PORTAUDIO.rescan_now()
def say(status):
    print(json.dumps(status.to_dict()), flush=True)
cfg = MicrophoneConfig(id="unplugged", device=sys.argv[1], reconnect_min_s=0.2,
                       reconnect_max_s=0.5)
worker = build_audio_worker(cfg, default_audio_models(), Path(sys.argv[2]), DeviceRef(id="d"),
                            lambda e: None, SystemClock(), say)
worker.start()
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    time.sleep(0.1)
print(json.dumps({"alive": worker.alive, "stats": worker.stats()}), flush=True)
os._exit(0)  # skip PortAudio's exit handler: its JACK host API aborts once the server is gone
"""


def test_a_vanished_sound_card_is_reported_and_retried(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    pytest.importorskip("sounddevice")
    name = f"edgeagentgone{os.getpid()}"
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1",
           "PYTHONPATH": str(REPO)}
    proc = _start_jackd(name)
    child = subprocess.Popen([sys.executable, "-c", CHILD, "system", str(models_dir), "12"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines: list[dict[str, object]] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("{"):
                lines.append(json.loads(line))
                if lines[-1].get("state") == "running":
                    break
        assert lines and lines[-1].get("state") == "running", lines
        stop_jackd(proc)  # the sound card goes away under a running stream
        out, _ = child.communicate(timeout=60)
    finally:
        stop_jackd(proc)
        if child.poll() is None:
            child.kill()
            child.wait()
    lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    states = [x["state"] for x in lines if "state" in x]
    assert "reconnecting" in states, lines
    lost = next(x for x in lines if x.get("state") == "reconnecting")
    assert str(lost["detail"]).startswith("microphone unplugged: ")
    assert lost["reconnects"] == 1
    final = lines[-1]
    assert final["alive"] is True  # still trying, never crashed
    assert final["stats"]["state"] in ("reconnecting", "running")  # type: ignore[index]


def test_the_microphone_comes_back_after_the_sound_server_restarts(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sounddevice")
    name = f"edgeagentback{os.getpid()}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    proc = _start_jackd(name)
    run = start(models_dir, id="back", device="system", realtime=True, reconnect_min_s=0.2,
                reconnect_max_s=1.0)
    try:
        wait_for(lambda: run.worker.stats()["windows"] >= 1, timeout=30)
        stop_jackd(proc)  # the server dies under the running microphone
        wait_for(lambda: run.worker.tracker.state is SourceState.RECONNECTING, timeout=30)
        time.sleep(3.0)  # several attempts while it is away: still reconnecting, not error
        assert run.worker.tracker.state is SourceState.RECONNECTING
        assert run.worker.alive
        proc = _start_jackd(name)  # back, with no restart of the microphone or the agent
        wait_for(lambda: run.worker.tracker.state is SourceState.RUNNING, timeout=30)
        windows = run.worker.stats()["windows"]
        wait_for(lambda: run.worker.stats()["windows"] >= windows + 3, timeout=30)
    finally:
        run.worker.stop()
        stop_jackd(proc)
    states = [s.state.value for s in run.states]
    first_lost = states.index("reconnecting")
    assert states[:first_lost] == ["running"], states
    assert set(states[first_lost:-2]) == {"reconnecting"}, states  # never error while away
    assert states[-2:] == ["running", "stopped"], states
    lost = run.states[first_lost]
    assert lost.detail is not None and lost.detail.startswith("microphone back: ")
    assert run.states[-2].reconnects == 1
